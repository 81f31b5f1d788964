"""The app's rotating log file, in the user log folder (``PRUNESTUDIO_LOG_DIR`` overrides it)."""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

__all__ = ["log_dir", "setup_logging"]


def log_dir() -> Path:
    env = os.environ.get("PRUNESTUDIO_LOG_DIR")
    if env:
        return Path(env)
    from platformdirs import user_log_dir

    return Path(user_log_dir("prunestudio", appauthor=False))


def setup_logging(level: int = logging.INFO) -> Path | None:
    """Rotating log file in the user log folder; returns its path (None if it cannot be written)."""
    root = logging.getLogger("prunestudio")
    root.setLevel(level)
    path = None
    try:
        d = log_dir()
        d.mkdir(parents=True, exist_ok=True)
        path = d / "prunestudio.log"
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
        root.addHandler(handler)
    except OSError:
        path = None
    logging.captureWarnings(True)
    return path
