"""The errors the engine raises for anything a user can cause: one base class and a subclass per kind.

:class:`PruneStudioError` is the base; :class:`ModelLoadError`, :class:`CalibrationError`,
:class:`ConfigError`, :class:`EvaluationError` and :class:`ExportError` say which step the problem
belongs to, and :class:`Cancelled` is the user's own stop (the CLI exits 130 on it, the GUI logs it
as a warning). Two internal signals live next to the code that raises and catches them
(``prune.lockstep.NotLockstepable``, ``prune.block.BlockOutOfMemory``). Anything else that
escapes the engine is a bug, shown as such.

Every error carries a short, readable sentence (``str(err)``) and optional ``details`` (longer
text, a hint or the underlying traceback) that a GUI shows on demand and the CLI prints with
``--verbose``.
"""

from __future__ import annotations


class PruneStudioError(Exception):
    """A failure with a message meant for the user, not a programmer."""

    def __init__(self, message: str, *, details: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} {self.hint}"


class ModelLoadError(PruneStudioError):
    """The model could not be found, read or understood."""


class CalibrationError(PruneStudioError):
    """Calibration text or a saved calibration set is unusable."""


class ConfigError(PruneStudioError):
    """A setting is impossible (sparsity outside (0, 1), N >= M, ...)."""


class EvaluationError(PruneStudioError):
    """An evaluation set or task file is missing or malformed."""


class ExportError(PruneStudioError):
    """Writing the pruned model failed; nothing half-written is left behind."""


class Cancelled(PruneStudioError):
    """The user asked to stop. Raised by long operations between their steps."""

    def __init__(self, message: str = "Cancelled by the user.") -> None:
        super().__init__(message)
