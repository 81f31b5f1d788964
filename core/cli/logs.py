"""The command line's logging: warnings (with ``-v``, debug records and tracebacks) as
``level: message`` lines on the stderr of the moment, and the libraries' own chatter off."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - cosmetic only
        pass


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (tests and embedding code swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class _LevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.levelname_lower = record.levelname.lower()
        return super().format(record)


def setup_logging(verbose: bool) -> logging.Logger:
    """Warnings (and with -v, debug records and tracebacks) as ``level: message`` lines on stderr."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(h)
    handler = _StderrHandler()
    handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
    handler.setFormatter(_LevelFormatter("%(levelname_lower)s: %(message)s"))
    root.addHandler(handler)
    log = logging.getLogger("prunestudio")
    log.setLevel(logging.DEBUG if verbose else logging.NOTSET)
    return log


def teardown_logging() -> None:
    """Leave no handler behind when main() is called in-process (tests, scripts)."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(h)
    logging.getLogger("prunestudio").setLevel(logging.NOTSET)
