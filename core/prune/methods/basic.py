"""Magnitude and Wanda: score-and-mask methods without weight updates.

* Magnitude: score |W_ij|, one threshold per weight matrix for unstructured sparsity (the
  baseline of the Wanda paper, Sun et al. 2024, Sec. 4), N lowest per group of M for N:M.
* Wanda (Sun et al., 2024, "A Simple and Effective Pruning Approach for LLMs", Eq. 1):
  score |W_ij| * ||X_j||_2, compared within each output row (or each N:M group).
"""

from __future__ import annotations

import torch

from ..stats import InputStats
from .masks import mask_for, nm_mask, per_matrix_mask


def magnitude_mask(weight: torch.Tensor, sparsity: float, n: int = 0, m: int = 0) -> torch.Tensor:
    scores = weight.abs()
    if n and m:
        return nm_mask(scores, n, m)
    return per_matrix_mask(scores, sparsity)


def wanda_scores(weight: torch.Tensor, stats: InputStats) -> torch.Tensor:
    return weight.abs().float() * stats.col_norm.to(weight.device).unsqueeze(0)


def wanda_mask(weight: torch.Tensor, stats: InputStats, sparsity: float, n: int = 0, m: int = 0) -> torch.Tensor:
    return mask_for(wanda_scores(weight, stats), sparsity, n, m)
