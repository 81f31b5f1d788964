"""OWL: outlier-weighted layer-wise sparsity allocation.

Yin et al., "Outlier Weighed Layerwise Sparsity (OWL)" (ICML 2024); formulas follow
luuyin/OWL ``lib/prune_all.py`` (``check_outlier_mean`` and the allocation in
``prune_wanda_outlier``), re-written:

* a block's layer-wise outlier distribution (LOD) is the fraction of its Wanda scores
  ``|W| * ||X||`` (all prunable modules of the block concatenated) above ``m`` times their mean;
* the ratios are min-max normalised to ``[0, 2 * lam]``, centred, and subtracted from the target:
  ``s_l = target - (x_l - mean(x))``, so more outliers give a lower sparsity and the mean is
  exactly the target (the reference computes densities ``1 - s_l`` the same way).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ...errors import ConfigError
from .masks import nm_for_sparsity

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


def owl_nm_allocation(sparsities: Sequence[float], m: int) -> list[int]:
    """The N of an N:M pattern for each block's sparsity (closest, within ``1..m-1``)."""
    if m < 2:
        raise ConfigError(f"N:M structure needs M >= 2, got M = {m}.")
    return [nm_for_sparsity(float(s), m) for s in sparsities]
