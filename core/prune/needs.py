"""What the statistics hooks must gather about every module's input for a method.

Kept apart from :mod:`stats` (which does the gathering, with torch) so that the method registry,
and through it the settings in ``core/config.py``, can name a method's needs without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StatsNeeds:
    """Which accumulators :class:`~.stats.InputStats` keeps: squared column norms (Wanda), running
    mean and variance over all tokens (``moments``), the mean of the variances of each calibration
    sequence (``batch_var``, DSnoT's variance as its reference computes it), the ``in x in``
    Hessian (SparseGPT)."""

    sq_norm: bool = True
    moments: bool = False
    hessian: bool = False
    batch_var: bool = False

    def __or__(self, other: "StatsNeeds") -> "StatsNeeds":
        return StatsNeeds(
            self.sq_norm or other.sq_norm,
            self.moments or other.moments,
            self.hessian or other.hessian,
            self.batch_var or other.batch_var,
        )

    @property
    def vectors(self) -> int:
        """float32 vectors of ``in`` values kept per module input (the Hessian not counted)."""
        return int(self.sq_norm) + 2 * int(self.moments) + int(self.batch_var)
