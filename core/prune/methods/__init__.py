"""Pruning methods as pure functions on one weight matrix and its input statistics.

:func:`prune_module` is the single dispatch point the pipeline calls for every linear module; it
returns the new ``[out, in]`` weight (with zeros where pruned) and method-specific information.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ...config import PruneConfig
from ...model.architecture import module_role
from ..stats import InputStats, StatsNeeds
from .basic import magnitude_mask, wanda_mask


@dataclass
class ModuleOutcome:
    # new [out, in] weight with zeros where pruned; None: the weights are unchanged apart from the
    # mask (magnitude, Wanda), which the caller applies in place without a copy of the matrix
    weight: torch.Tensor | None
    mask: torch.Tensor  # bool [out, in], True = removed
    info: dict[str, Any] = field(default_factory=dict)
    # ``sync=False`` only: 0-dim bool tensor, False when the result must be recomputed with sync
    ok: torch.Tensor | None = None


class SharedInputCache:
    """Holds a value derived from one module's input statistics for the next modules that read
    the same input (q/k/v, gate/up share one :class:`InputStats`): SparseGPT's factor of the
    inverse Hessian is computed once per shared input instead of once per module.

    One value at a time: modules sharing an input are pruned one after the other, and the value
    is dropped as soon as a module with other statistics comes, so it never holds more than one
    extra matrix. Use one cache per block.
    """

    def __init__(self) -> None:
        self._stats: InputStats | None = None
        self._key: Any = None
        self._value: Any = None

    def get(self, stats: InputStats, key: Any, make: Callable[[], Any]) -> Any:
        if self._stats is not stats or self._key != key:
            self._stats = self._key = self._value = None  # freed before the next one is made
            self._value = make()
            self._stats, self._key = stats, key
        return self._value

    def clear(self) -> None:
        self._stats = self._key = self._value = None


def stats_needs(cfg: PruneConfig) -> StatsNeeds | None:
    """What the hooks must collect for ``cfg`` (None: no calibration forward pass at all)."""
    method = cfg.dsnot_init if cfg.method == "dsnot" else cfg.method
    if method == "magnitude" and cfg.method != "dsnot":
        return None
    needs = StatsNeeds(sq_norm=True)
    if method == "sparsegpt":
        needs = needs | StatsNeeds(sq_norm=True, hessian=True)
    if cfg.method == "dsnot":
        needs = needs | StatsNeeds(sq_norm=True, moments=True)
    return needs


def _initial(method: str, weight: torch.Tensor, stats: InputStats | None, sparsity: float,
             n: int, m: int, cfg: PruneConfig, sync: bool = True,
             shared: SharedInputCache | None = None) -> ModuleOutcome:
    if method == "magnitude":
        return ModuleOutcome(None, magnitude_mask(weight, sparsity, n, m))
    if method == "wanda":
        assert stats is not None
        return ModuleOutcome(None, wanda_mask(weight, stats, sparsity, n, m))
    if method == "sparsegpt":
        from .sparsegpt import hessian_factor, sparsegpt_prune

        assert stats is not None and stats.hessian is not None
        hessian = stats.hessian
        factor = None
        if shared is not None:
            factor = shared.get(stats, ("sparsegpt", cfg.sparsegpt_damp, sync),
                                lambda: hessian_factor(hessian, cfg.sparsegpt_damp, sync, device=weight.device))
        res = sparsegpt_prune(weight, hessian, sparsity, n=n, m=m, blocksize=cfg.sparsegpt_blocksize,
                              percdamp=cfg.sparsegpt_damp, sync=sync, factor=factor)
        info = {"damping": res.damping, "damping_increased": res.damping_increased, "error": res.error}
        return ModuleOutcome(res.weight, res.mask, info, ok=res.ok)
    raise ValueError(f"not an initial-mask method: {method}")


def prune_module(weight: torch.Tensor, stats: InputStats | None, sparsity: float,
                 cfg: PruneConfig, n: int = 0, m: int = 0, seqlen: int = 1,
                 name: str = "", sync: bool = True, shared: SharedInputCache | None = None) -> ModuleOutcome:
    """Prune one ``[out, in]`` float32 weight to ``sparsity`` (or N:M) with ``cfg.method``.

    ``seqlen`` converts DSnoT's threshold from the reference's units (an error summed over a
    sequence) to ours (per token); ``name`` is the module's name, for messages. ``sync=False``
    (GPU pipeline, SparseGPT only) avoids host synchronisation: the outcome's ``ok`` tensor must
    then be checked, and the module redone with ``sync=True`` when it is False. ``shared``: the
    block's :class:`SharedInputCache`, so modules reading the same input share derived values.
    """
    if cfg.method != "dsnot":
        return _initial(cfg.method, weight, stats, sparsity, n, m, cfg, sync, shared)
    from .dsnot import dsnot_refine

    init = _initial(cfg.dsnot_init, weight, stats, sparsity, n, m, cfg, shared=shared)
    assert stats is not None
    if cfg.dsnot_skip != "none" and module_role(name) == cfg.dsnot_skip:
        # the reference's default (skip_layer="mlp") leaves the MLP with its initial mask; by role,
        # not by the word "mlp", so OPT's fc1/fc2 count as MLP too
        return ModuleOutcome(init.weight, init.mask, {**init.info, "swaps": 0, "cycles": 0, "dsnot_skipped": True})
    res = dsnot_refine(weight, init.mask, stats, sparsity, n=n, m=m,
                       max_cycles=cfg.dsnot_max_cycles,
                       update_threshold=cfg.dsnot_threshold / max(seqlen, 1),
                       skip_layer="no_skip", module_name=name)
    # DSnoT changes only the mask. Weights kept by the initial mask keep the initial method's values
    # (SparseGPT's compensated ones); weights DSnoT revives come back with their dense values.
    info = dict(init.info)
    info.update({"swaps": res.swaps, "cycles": res.cycles})
    if init.weight is None:
        return ModuleOutcome(None, res.mask, info)
    base = torch.where(init.mask, weight, init.weight)
    return ModuleOutcome(base.masked_fill(res.mask, 0), res.mask, info)
