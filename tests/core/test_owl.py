"""OWL: outlier ratio against a brute-force count, allocation mean/order/bounds, N:M mapping."""

from __future__ import annotations

import pytest
import torch
from prunestudio.core.errors import ConfigError
from prunestudio.core.prune.methods.owl import outlier_ratio, owl_allocation, owl_nm_allocation


def _block_scores(seed: int, outlier_rows: int) -> list[torch.Tensor]:
    """Wanda scores |W| * ||X_j|| of a block of three modules; ``outlier_rows`` input features of
    the first module get a 50x activation norm (the massive activations OWL looks for)."""
    g = torch.Generator().manual_seed(seed)
    scores = []
    for rows, cols in [(16, 32), (16, 32), (32, 16)]:
        w = torch.randn(rows, cols, generator=g)
        norm = torch.rand(cols, generator=g) + 0.5
        scores.append(w.abs() * norm)
    scores[0][:, :outlier_rows] *= 50.0
    return scores


def _brute_force(scores: list[torch.Tensor], m: float) -> float:
    values = [float(v) for s in scores for v in s.flatten()]
    mean = sum(values) / len(values)
    return sum(1 for v in values if v > m * mean) / len(values)


@pytest.mark.parametrize("m", [1.0, 3.0, 5.0])
def test_outlier_ratio_brute_force(m: float) -> None:
    torch.manual_seed(0)
    scores = _block_scores(0, outlier_rows=2)
    assert outlier_ratio(scores, m) == pytest.approx(_brute_force(scores, m), abs=0)


def test_outlier_ratio_uses_block_mean() -> None:
    # Module b alone has no outliers, but the mean over the whole block is what counts.
    a = torch.tensor([[100.0, 1.0], [1.0, 1.0]])
    b = torch.ones(4, 4)
    mean = (103.0 + 16.0) / 20.0
    assert 100.0 > 5 * mean
    assert outlier_ratio([a, b], 5.0) == pytest.approx(1 / 20)
    assert outlier_ratio([b], 5.0) == 0.0
    with pytest.raises(ConfigError):
        outlier_ratio([])


def test_more_outliers_lower_sparsity() -> None:
    torch.manual_seed(0)
    ratios = [outlier_ratio(_block_scores(i, k), 5.0) for i, k in enumerate([0, 1, 2, 4, 8, 3])]
    assert ratios[4] == max(ratios) and ratios[0] == min(ratios)
    alloc = owl_allocation(ratios, 0.7, lam=0.08)
    assert len(alloc) == len(ratios)
    assert abs(sum(alloc) / len(alloc) - 0.7) < 1e-6
    assert alloc.index(min(alloc)) == 4  # the block built with the most outliers
    assert alloc.index(max(alloc)) == 0
    order = sorted(range(len(ratios)), key=lambda i: ratios[i])
    assert all(alloc[a] >= alloc[b] for a, b in zip(order, order[1:]))
    assert max(alloc) - min(alloc) == pytest.approx(2 * 0.08)


def test_allocation_matches_reference_formula() -> None:
    ratios = [0.2, 1.5, 0.7, 3.1]
    lam, target = 0.08, 0.5
    lo, hi = min(ratios), max(ratios)
    x = [(r - lo) / (hi - lo) * 2 * lam for r in ratios]
    density = [v - sum(x) / len(x) + (1 - target) for v in x]  # as in luuyin/OWL
    expect = [1 - d for d in density]
    assert owl_allocation(ratios, target, lam) == pytest.approx(expect, abs=1e-12)


def test_uniform_and_degenerate_cases() -> None:
    assert owl_allocation([0.01, 0.01, 0.01], 0.6) == [0.6, 0.6, 0.6]
    assert owl_allocation([0.3, 0.1], 0.6, lam=0.0) == [0.6, 0.6]
    assert owl_allocation([0.4], 0.55) == [0.55]


def test_clamped_allocation_keeps_mean_and_bounds() -> None:
    ratios = [0.0, 0.1, 0.2, 5.0]
    alloc = owl_allocation(ratios, 0.9, lam=0.3)  # unclamped values would exceed 1
    assert all(0.0 < s < 1.0 for s in alloc)
    assert abs(sum(alloc) / len(alloc) - 0.9) < 1e-6
    assert alloc[0] >= alloc[1] >= alloc[2] >= alloc[3]


def test_invalid_inputs() -> None:
    for target in (0.0, 1.0, -0.1, 1.2):
        with pytest.raises(ConfigError):
            owl_allocation([0.1, 0.2], target)
    with pytest.raises(ConfigError):
        owl_allocation([0.1, 0.2], 0.5, lam=-0.01)
    with pytest.raises(ConfigError):
        owl_allocation([], 0.5)
    with pytest.raises(ConfigError):
        owl_allocation([0.1, float("nan")], 0.5)
    with pytest.raises(ConfigError):
        owl_nm_allocation([0.5], 1)


def test_nm_allocation() -> None:
    assert owl_nm_allocation([0.5, 0.42, 0.58, 0.05, 0.99], 8) == [4, 3, 5, 1, 7]
    assert owl_nm_allocation([0.5, 0.3, 0.7], 4) == [2, 1, 3]
