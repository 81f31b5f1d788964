"""The ``prunestudio`` command line: the same engine as the desktop app, headless."""

from .main import main

__all__ = ["main"]
