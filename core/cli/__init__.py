"""The ``prunestudio`` command line: the same engine as the desktop app, headless."""

from .commands import main

__all__ = ["main"]
