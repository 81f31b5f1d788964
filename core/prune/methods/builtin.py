"""The built-in methods, registered on import: magnitude, Wanda, SparseGPT and DSnoT.

Each prune function adapts one implementation module (:mod:`.basic`, :mod:`.sparsegpt`,
:mod:`.dsnot`) to the registry's call (see :mod:`.interface`); the implementations are imported
on the first call, so registering the methods does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..needs import StatsNeeds
from .interface import ModuleContext, ModuleOutcome
from .registry import Method, register

if TYPE_CHECKING:
    import torch

    from ..stats import InputStats


def prune_magnitude(weight: torch.Tensor, stats: InputStats | None, sparsity: float, n: int, m: int,
                    ctx: ModuleContext) -> ModuleOutcome:
    from .basic import magnitude_mask

    return ModuleOutcome(None, magnitude_mask(weight, sparsity, n, m))


def prune_wanda(weight: torch.Tensor, stats: InputStats | None, sparsity: float, n: int, m: int,
                ctx: ModuleContext) -> ModuleOutcome:
    from .basic import wanda_mask

    assert stats is not None
    return ModuleOutcome(None, wanda_mask(weight, stats, sparsity, n, m))


def prune_sparsegpt(weight: torch.Tensor, stats: InputStats | None, sparsity: float, n: int, m: int,
                    ctx: ModuleContext) -> ModuleOutcome:
    from .sparsegpt import hessian_factor, sparsegpt_prune

    assert stats is not None and stats.hessian is not None
    cfg, sync, hessian = ctx.settings, ctx.sync, stats.hessian
    factor = None
    if ctx.shared is not None:  # q/k/v (gate/up) share one input, so one factor
        factor = ctx.shared.get(stats, ("sparsegpt", cfg.sparsegpt_damp, sync),
                                lambda: hessian_factor(hessian, cfg.sparsegpt_damp, sync, device=weight.device))
    res = sparsegpt_prune(weight, hessian, sparsity, n=n, m=m, blocksize=cfg.sparsegpt_blocksize,
                          percdamp=cfg.sparsegpt_damp, sync=sync, factor=factor)
    info = {"damping": res.damping, "damping_increased": res.damping_increased, "error": res.error}
    return ModuleOutcome(res.weight, res.mask, info, ok=res.ok)


def refine_dsnot(weight: torch.Tensor, stats: InputStats | None, sparsity: float, n: int, m: int,
                 ctx: ModuleContext) -> ModuleOutcome:
    import torch

    from ...model.architecture import module_role
    from .dsnot import dsnot_refine

    init, cfg = ctx.initial, ctx.settings
    assert init is not None and stats is not None
    if cfg.dsnot_skip != "none" and module_role(ctx.name) == cfg.dsnot_skip:
        # the reference's default (skip_layer="mlp") leaves the MLP with its initial mask; by role,
        # not by the word "mlp", so OPT's fc1/fc2 count as MLP too
        return ModuleOutcome(init.weight, init.mask, {**init.info, "swaps": 0, "cycles": 0, "dsnot_skipped": True})
    res = dsnot_refine(weight, init.mask, stats, sparsity, n=n, m=m,
                       max_cycles=cfg.dsnot_max_cycles,
                       update_threshold=cfg.dsnot_threshold / max(ctx.seqlen, 1),
                       skip_layer="no_skip", module_name=ctx.name)
    # DSnoT changes only the mask. Weights kept by the initial mask keep the initial method's values
    # (SparseGPT's compensated ones); weights DSnoT revives come back with their dense values.
    info = dict(init.info)
    info.update({"swaps": res.swaps, "cycles": res.cycles})
    if init.weight is None:
        return ModuleOutcome(None, res.mask, info)
    base = torch.where(init.mask, weight, init.weight)
    return ModuleOutcome(base.masked_fill(res.mask, 0), res.mask, info)


MAGNITUDE = register(Method(
    "magnitude", "Magnitude", "Removes the smallest weights; needs no calibration data.",
    prune=prune_magnitude))
WANDA = register(Method(
    "wanda", "Wanda", "Removes weights that are small relative to how strongly their inputs fire (fast, good).",
    prune=prune_wanda, needs=StatsNeeds(sq_norm=True)))
# one pass: SparseGPT's updates compensate for the pruned modules before them, and one pass matched
# or beat two here, while Wanda's 2:4 masks scored on already-pruned inputs lost 1-10% perplexity
# on each of four calibration draws (bench/results/NOTES.md)
SPARSEGPT = register(Method(
    "sparsegpt", "SparseGPT",
    "Removes weights and adjusts the remaining ones to make up for them (slower, often best).",
    prune=prune_sparsegpt, needs=StatsNeeds(sq_norm=True, hessian=True), hessian=True, one_pass=True,
    defers_sync=True, settings=("sparsegpt_blocksize", "sparsegpt_damp")))
DSNOT = register(Method(
    "dsnot", "DSnoT",
    "Starts from another method's mask and swaps pruned and kept weights to reduce the error, without training.",
    prune=refine_dsnot, needs=StatsNeeds(sq_norm=True, moments=True), one_pass=None, refines="dsnot_init",
    settings=("dsnot_max_cycles", "dsnot_threshold", "dsnot_skip")))
