"""How much pruning changed what a module computes: the relative output error
``||(W - W_pruned) X|| / ||W X||`` on a fixed sample of its calibration inputs.

At a uniform target every module of a sparsity heatmap has the same colour; this number says where
pruning hurt. It is measured, not estimated: ``X`` is :attr:`InputStats.sample` (up to 128 token
rows of the module's first calibration batch, evenly spaced, kept by every statistics pass), so the
cost is two ``[128, in] x [in, out]`` products per module (about 128/(tokens of the calibration
set) of one forward pass: under 1% for 64 x 512 tokens) and 128 rows per distinct module input in
memory. For each output row ``i`` the same ratio restricted to that row (``row_error``) is shown in
the mask view. Methods without calibration data (magnitude) have no sample, hence no error. For the
experts of an MoE block each expert is measured on its own routed tokens and a module's error
combines them: ``sqrt(sum_e ||dY_e||^2 / sum_e ||Y_e||^2)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .stats import InputStats

__all__ = ["dense_outputs", "measure"]


def dense_outputs(stats: InputStats | None, weight: torch.Tensor) -> torch.Tensor | None:
    """``X W^T`` on the sample, before pruning (None without a sample)."""
    if stats is None or stats.sample is None:
        return None
    x = stats.sample.to(device=weight.device, dtype=torch.float32)
    return x @ weight.to(torch.float32).t()


def measure(stats: InputStats, dense: torch.Tensor, pruned_weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """``output_error`` (0-dim), per-row ``row_error``, and the squared norms ``err_sq`` / ``ref_sq``
    they come from (to combine several matrices), all still on the device."""
    assert stats.sample is not None
    x = stats.sample.to(device=pruned_weight.device, dtype=torch.float32)
    diff = dense - x @ pruned_weight.to(torch.float32).t()
    err_rows = diff.pow(2).sum(0)
    ref_rows = dense.pow(2).sum(0)
    err_sq, ref_sq = err_rows.sum(), ref_rows.sum()
    return {"output_error": (err_sq / ref_sq.clamp_min(1e-30)).sqrt(),
            "row_error": (err_rows / ref_rows.clamp_min(1e-30)).sqrt(),
            "err_sq": err_sq, "ref_sq": ref_sq}
