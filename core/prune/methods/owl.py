"""OWL: outlier-weighted layer-wise sparsity allocation.

Yin et al., "Outlier Weighed Layerwise Sparsity (OWL)" (ICML 2024); formulas follow
luuyin/OWL ``lib/prune_all.py`` (``check_outlier_mean`` and the allocation in
``prune_wanda_outlier``), re-written:

* a block's layer-wise outlier distribution (LOD) is the fraction of its Wanda scores
  ``|W| * ||X||`` (all prunable modules of the block concatenated) above ``m`` times their mean;
* the ratios are min-max normalised to ``[0, 2 * lam]``, centred, and subtracted from the target:
  ``s_l = target - (x_l - mean(x))``, so more outliers give a lower sparsity and the mean is
  exactly the target (the reference computes densities ``1 - s_l`` the same way).

With an N:M structure (the reference's ``prune_wanda_outlier_structure``) the same formula runs in
units of N around the structure's N, so ``--sparsity`` plays no part:

* ``lam`` is mapped to N units as ``lam_n = lam * M`` (one step of N is ``1 / M`` of sparsity);
  the ratios are normalised to ``[0, 2 * lam_n]``, centred, and ``c_l = -(x_l - mean(x))`` is
  the real-valued change of block ``l``'s N. The reference's ``--Lamda`` for N:M is this span
  ``2 * lam_n``: its ``--Lamda 2`` with 5:8 is ``lam = 2 / (2 * 8) = 0.125`` here;
* each block's N is ``N + d_l`` with integers ``d_l`` in ``[-floor(lam_n), floor(lam_n)]``
  (the paper's ``[S - lam, S + lam]`` in N units) and ``N + d_l`` in ``[1, M - 1]``, summing to 0,
  so the mean N over blocks is exactly the structure's N, and closest to ``c`` (least squares).
  The reference rounds each ``c_l`` alone, so its mean N can drift and an extreme block can leave
  the range by one step; otherwise the two agree. ``lam_n < 1`` (``lam < 1 / M``; the default
  0.08 with 2:4 or 4:8) leaves every block at N.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ...errors import ConfigError

__all__ = ["outlier_ratio", "owl_allocation", "owl_nm_allocation"]

# Allocated sparsities are kept inside [_EPS, 1 - _EPS] (open interval (0, 1)).
_EPS = 1e-6


@torch.no_grad()
def outlier_ratio(scores: Sequence[torch.Tensor], m: float = 5.0) -> float:
    """Fraction of all entries of ``scores`` (one Wanda score tensor per module of a block)
    strictly greater than ``m`` times the mean of all of them together."""
    if len(scores) == 0:
        raise ConfigError("OWL needs at least one module's scores to compute an outlier ratio.")
    device = scores[0].device
    flat = [s.detach().reshape(-1).to(device=device, dtype=torch.float64) for s in scores]
    total = sum(f.numel() for f in flat)
    if total == 0:
        raise ConfigError("OWL: the modules of this block have no weights.")
    mean = sum(f.sum() for f in flat) / total
    threshold = mean * m
    count = sum((f > threshold).sum() for f in flat)
    return float(count) / total


def _shift_into_bounds(base: list[float], target: float) -> list[float]:
    """Clamp ``base + c`` into [_EPS, 1 - _EPS] with the ``c`` that keeps the mean at ``target``.

    The clamped mean is continuous and non-decreasing in ``c``, so bisection finds it; the order
    of the values is preserved.
    """
    lo_b, hi_b = _EPS, 1.0 - _EPS

    def mean_at(c: float) -> float:
        return math.fsum(min(hi_b, max(lo_b, b + c)) for b in base) / len(base)

    lo, hi = lo_b - max(base), hi_b - min(base)  # mean_at(lo) = lo_b <= target <= hi_b = mean_at(hi)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mean_at(mid) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    c = 0.5 * (lo + hi)
    return [min(hi_b, max(lo_b, b + c)) for b in base]


def owl_allocation(ratios: Sequence[float], target: float, lam: float = 0.08) -> list[float]:
    """Per-block sparsities from outlier ratios, averaging exactly ``target``.

    ``lam`` is the reference's ``--Lamda``: the sparsities span at most ``2 * lam`` around the
    target. Equal ratios give a uniform allocation. If a value would leave (0, 1) (large ``lam``
    near 0 or 1) all values are clamped and re-shifted together so the mean stays the target.
    """
    if not 0.0 < target < 1.0:
        raise ConfigError(f"OWL target sparsity must be in (0, 1), got {target}.")
    if not lam >= 0.0 or not math.isfinite(lam):
        raise ConfigError(f"OWL lambda must be a finite number >= 0, got {lam}.")
    values = [float(r) for r in ratios]
    if not values:
        raise ConfigError("OWL needs at least one block.")
    if not all(math.isfinite(v) for v in values):
        raise ConfigError("OWL outlier ratios must be finite numbers.")
    low, high = min(values), max(values)
    if high - low <= 0.0 or lam == 0.0:
        return [float(target)] * len(values)
    scaled = [(v - low) / (high - low) * 2.0 * lam for v in values]
    centre = math.fsum(scaled) / len(scaled)
    base = [target - (x - centre) for x in scaled]
    if all(_EPS <= b <= 1.0 - _EPS for b in base):
        return base
    return _shift_into_bounds(base, target)


def owl_nm_allocation(ratios: Sequence[float], n: int, m: int, lam: float = 0.08) -> list[int]:
    """Per-block N of an N:M structure from outlier ratios; the mean N is exactly ``n``.

    ``lam`` is in units of sparsity, as for :func:`owl_allocation`; in N units it is
    ``lam * m``. See the module docstring for the formula and how it relates to the reference.
    """
    if m < 2 or not 0 < n < m:
        raise ConfigError(f"N:M structure needs 0 < N < M, got {n}:{m}.")
    if not lam >= 0.0 or not math.isfinite(lam):
        raise ConfigError(f"OWL lambda must be a finite number >= 0, got {lam}.")
    values = [float(r) for r in ratios]
    if not values:
        raise ConfigError("OWL needs at least one block.")
    if not all(math.isfinite(v) for v in values):
        raise ConfigError("OWL outlier ratios must be finite numbers.")
    lam_n = lam * m
    reach = math.floor(lam_n + 1e-9)  # 0.25 * 4 must give 1, not 0
    lo, hi = max(-reach, 1 - n), min(reach, m - 1 - n)
    low, high = min(values), max(values)
    if high - low <= 0.0 or lo == hi:
        return [n] * len(values)
    scaled = [(v - low) / (high - low) * 2.0 * lam_n for v in values]
    centre = math.fsum(scaled) / len(scaled)
    want = [centre - x for x in scaled]  # more outliers: fewer weights removed
    # Closest integers in [lo, hi] summing to 0: start from each one rounded into the bounds, then
    # move one step at a time the block whose move costs least (separable convex: this is optimal).
    steps = [min(hi, max(lo, round(c))) for c in want]
    total = sum(steps)
    while total != 0:
        up = total < 0
        movable = [i for i, d in enumerate(steps) if (d < hi if up else d > lo)]
        i = max(movable, key=lambda j: (want[j] - steps[j]) if up else (steps[j] - want[j]))
        steps[i] += 1 if up else -1
        total += 1 if up else -1
    return [n + d for d in steps]
