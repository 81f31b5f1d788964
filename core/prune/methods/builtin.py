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


def _dsnot_start(weight: torch.Tensor, stats: InputStats, sparsity: float, n: int, m: int,
                 ctx: ModuleContext) -> tuple[torch.Tensor, torch.Tensor | None]:
    """DSnoT's initial mask and the score ranking an N:M group's kept weights, as the reference
    builds them for its initial method: Wanda's mask and ``|W| * ||x||``; magnitude's ``|W|``
    compared per row (the magnitude method compares per matrix), or per N:M group; SparseGPT's own
    mask and its saliency ``W^2 / U_jj^2`` (``U`` the upper Cholesky factor of the damped inverse
    Hessian, 0 for dead inputs). Any other initial method: its mask, ranked with Wanda's score."""
    import torch

    from .basic import wanda_scores
    from .masks import mask_for
    from .sparsegpt import hessian_factor

    init, cfg = ctx.initial, ctx.settings
    assert init is not None
    w = weight.detach().to(torch.float32)
    if cfg.dsnot_init == "magnitude":
        scores = w.abs()
        return mask_for(scores, sparsity, n, m), scores
    if cfg.dsnot_init == "sparsegpt" and stats.hessian is not None:
        hessian = stats.hessian

        def make():
            return hessian_factor(hessian, cfg.sparsegpt_damp, True, device=weight.device)

        # the key prune_sparsegpt used for this input, so the factor just computed is reused
        factor = (ctx.shared.get(stats, ("sparsegpt", cfg.sparsegpt_damp, True), make)
                  if ctx.shared is not None else make())
        diag = torch.diagonal(factor.upper).to(torch.float32)
        return init.mask, (w.masked_fill(factor.dead, 0.0) ** 2) / diag.pow(2)
    return init.mask, wanda_scores(w, stats)


def refine_dsnot(weight: torch.Tensor, stats: InputStats | None, sparsity: float, n: int, m: int,
                 ctx: ModuleContext) -> ModuleOutcome:
    """DSnoT on the initial method's mask (see :func:`_dsnot_start`).

    DSnoT works on the dense weights and returns them under its refined mask, whatever method gave
    the initial mask: with SparseGPT, a refined module does not keep SparseGPT's weight updates
    (the reference uses SparseGPT only to rank weights and never updates them). Keeping the updated
    values for the kept weights while revived weights came back dense would mix two
    reconstructions, and the error DSnoT minimises, computed with the dense weights, would not be
    the error of the weights returned. A module left unrefined (``dsnot_skip``) keeps its starting
    outcome unchanged (SparseGPT's updated weights included).
    """
    from ...model.architecture import module_role
    from .dsnot import dsnot_refine

    init, cfg = ctx.initial, ctx.settings
    assert init is not None and stats is not None
    start_mask, scores = _dsnot_start(weight, stats, sparsity, n, m, ctx)
    if cfg.dsnot_skip != "none" and module_role(ctx.name) == cfg.dsnot_skip:
        # the reference's default (skip_layer="mlp") leaves the MLP with its initial mask; by role,
        # not by the word "mlp", so OPT's fc1/fc2 count as MLP too
        info = {**init.info, "swaps": 0, "cycles": 0, "dsnot_skipped": True}
        if start_mask is init.mask:
            return ModuleOutcome(init.weight, init.mask, info)
        return ModuleOutcome(None, start_mask, info)
    res = dsnot_refine(weight, start_mask, stats, sparsity, n=n, m=m,
                       max_cycles=cfg.dsnot_max_cycles,
                       update_threshold=cfg.dsnot_threshold / max(ctx.seqlen, 1),
                       skip_layer="no_skip", module_name=ctx.name, rule=cfg.dsnot_rule,
                       partner_scores=scores)
    info = {k: v for k, v in init.info.items() if init.weight is None or k != "error"}
    info.update({"swaps": res.swaps, "cycles": res.cycles})
    return ModuleOutcome(None, res.mask, info)


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
    prune=refine_dsnot, needs=StatsNeeds(sq_norm=True, moments=True, batch_var=True), one_pass=None,
    refines="dsnot_init", settings=("dsnot_max_cycles", "dsnot_threshold", "dsnot_skip", "dsnot_rule")))
