"""Turning importance scores into pruning masks.

Convention used everywhere in Prune Studio: a mask is a ``bool`` tensor shaped like the weight,
``True`` where the weight is *removed* (set to zero). Lower score = less important.

Three ways of comparing scores, as in the literature:

* per matrix: one threshold for the whole weight (magnitude baseline of the Wanda paper);
* per output row: each row loses exactly ``floor(in_features * sparsity)`` weights (Wanda);
* N:M: in every group of M consecutive inputs of a row, the N lowest scores are removed.
"""

from __future__ import annotations

import torch

from ...errors import ConfigError


def per_matrix_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove the ``floor(numel * sparsity)`` lowest-scoring entries of the whole matrix."""
    k = int(scores.numel() * sparsity)
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k <= 0:
        return mask
    idx = torch.topk(scores.reshape(-1), k, largest=False, sorted=False).indices
    mask.view(-1)[idx] = True
    return mask


def per_row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove exactly ``floor(in_features * sparsity)`` lowest-scoring entries in every row."""
    k = int(scores.shape[-1] * sparsity)
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k <= 0:
        return mask
    idx = torch.topk(scores, k, dim=-1, largest=False, sorted=False).indices
    mask.scatter_(-1, idx, True)
    return mask


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every group of ``m`` consecutive inputs of every row, remove the ``n`` lowest scores."""
    check_nm(n, m, scores.shape[-1])
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    idx = torch.topk(groups, n, dim=-1, largest=False, sorted=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, idx, True)
    return mask.reshape(rows, cols)


def check_nm(n: int, m: int, in_features: int | None = None, module: str = "") -> None:
    """Raise :class:`ConfigError` for an impossible N:M pattern."""
    if m <= 0 or n <= 0 or n >= m:
        raise ConfigError(f"N:M structure needs 0 < N < M, got {n}:{m}.")
    if in_features is not None and in_features % m != 0:
        where = f" of module {module}" if module else ""
        raise ConfigError(
            f"N:M structure {n}:{m} needs the input size{where} ({in_features}) to be a "
            f"multiple of {m}."
        )


def mask_for(scores: torch.Tensor, sparsity: float, n: int = 0, m: int = 0) -> torch.Tensor:
    """Per-row unstructured mask, or N:M when ``n`` and ``m`` are given."""
    if n and m:
        return nm_mask(scores, n, m)
    return per_row_mask(scores, sparsity)

