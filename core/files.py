"""Writing files so that a reader never sees half of one: a temporary file beside the target,
moved over it in one step (``os.replace``) only once it is complete, and removed on any failure."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write_text"]


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """A fresh temporary path in ``path``'s folder (created if missing) for the caller to write.

    When the block ends normally the temporary file replaces ``path``; when it raises (an error,
    a cancellation, Ctrl-C) the temporary file is removed and ``path`` is left as it was. ``suffix``
    ends the temporary name, for writers that choose a format from it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
