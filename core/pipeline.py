"""The layer-by-layer pruning pipeline, as a generator of typed events.

``iter_prune`` captures the inputs of the first decoder block, then for every block: moves it to
the compute device, gathers the statistics its method needs with forward pre-hooks, prunes its
modules one by one (checking for cancellation between modules), and replays the pruned block to
produce the next block's inputs. Only the current block and the activations live on the compute
device; statistics are float32, activations stay in the model's dtype.

Passes over the data, per block, are the minimum each method needs: none for magnitude, one
statistics pass plus one output pass for the others (plus one dense pre-pass for OWL, which must
know every block's outliers before it can allocate sparsity).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator

import numpy as np
import torch
from torch import nn

from . import architecture
from .capture import BlockInputs, capture_first_block_inputs, restore_outside, run_block
from .config import PruneConfig
from .devices import empty_cache
from .errors import Cancelled, ConfigError, PruneStudioError
from .events import (AllocationComputed, BlockDone, BlockStarted, Event, Message, ModulePruned,
                     PhaseDone, PhaseStarted, RunFinished, RunStarted)
from .methods import prune_module, stats_needs
from .methods.masks import check_nm, nm_for_sparsity
from .stats import InputStats, StatsNeeds

INCOMPLETE_FLAG = "_prunestudio_incomplete"


class BlockOutOfMemory(PruneStudioError):
    """The compute device ran out of memory while working on a block."""


@dataclass
class PruneResult:
    """What a finished run reports (the ``layers`` etc. of the report JSON)."""

    method: str
    sparsity_target: float
    structure: str
    block_sparsity: list[float]
    layers: list[dict[str, Any]]  # [{"index": i, "modules": {name: sparsity}}]
    global_sparsity: float
    seconds: dict[str, float]
    module_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # "i.name" -> extras
    owl: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    complete: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "sparsity_target": self.sparsity_target,
            "structure": self.structure,
            "block_sparsity": self.block_sparsity,
            "global_sparsity": self.global_sparsity,
            "layers": self.layers,
            "seconds": self.seconds,
            "module_info": self.module_info,
            "owl": self.owl,
            "notes": self.notes,
        }


def module_sparsity(module: nn.Module) -> float:
    w = module.weight
    return float((w == 0).sum().item()) / w.numel()


def mark_incomplete(model: nn.Module, value: bool) -> None:
    setattr(model, INCOMPLETE_FLAG, value)


def is_incomplete(model: nn.Module) -> bool:
    return bool(getattr(model, INCOMPLETE_FLAG, False))


class _BlockStats:
    """Hooks that feed :class:`InputStats`; modules seeing the same input tensor share one."""

    def __init__(self, block: nn.Module, names: tuple[str, ...], needs: StatsNeeds, device: torch.device):
        self.block, self.names, self.needs, self.device = block, names, needs, device
        self.stats: dict[str, InputStats] = {}
        self._handles: list[Any] = []
        self._first: dict[str, torch.Tensor] = {}
        for name in names:
            mod = block.get_submodule(name)
            self._handles.append(mod.register_forward_pre_hook(self._recorder(name)))
        self._grouped = False

    def _recorder(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if not self._grouped:
                self._first[name] = x  # kept alive until grouping, so storage identity is exact
            elif name in self.stats:
                self.stats[name].add(x)
            return None

        return hook

    def after_batch(self) -> None:
        if self._grouped:
            return
        # group modules whose inputs are the very same tensor storage (q/k/v, gate/up)
        leaders: dict[tuple[int, tuple[int, ...]], str] = {}
        shared: dict[str, str] = {}
        for name in self.names:
            x = self._first.get(name)
            if x is None:
                raise PruneStudioError(f"Module {name} received no input during calibration.")
            key = (x.untyped_storage().data_ptr() + x.storage_offset() * x.element_size(), tuple(x.shape))
            if key in leaders:
                shared[name] = leaders[key]
            else:
                leaders[key] = name
                st = InputStats(x.shape[-1], self.needs, self.device)
                st.add(x)
                self.stats[name] = st
        for name, leader in shared.items():
            self.stats[name] = self.stats[leader]
        # only leaders keep hooks from now on
        for h in self._handles:
            h.remove()
        self._handles = []
        for name in leaders.values():
            mod = self.block.get_submodule(name)
            self._handles.append(mod.register_forward_pre_hook(self._recorder(name)))
        self._first.clear()
        self._grouped = True

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._first.clear()


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower()
    )


def _preview(mask: torch.Tensor, size: int = 96) -> dict[str, np.ndarray]:
    """Downsampled density image and per-row sparsity of a mask, for the GUI."""
    m = mask.float()
    rows = m.mean(dim=1)
    img = torch.nn.functional.adaptive_avg_pool2d(m[None, None], (min(size, m.shape[0]), min(size, m.shape[1])))[0, 0]
    return {"row_sparsity": rows.cpu().numpy().astype(np.float32),
            "mask_image": img.cpu().numpy().astype(np.float32)}


def iter_prune(
    model: nn.Module,
    input_ids: torch.Tensor | None,
    cfg: PruneConfig,
    device: torch.device | str = "cpu",
    should_stop: Callable[[], bool] = lambda: False,
    previews: bool = True,
) -> Generator[Event, None, PruneResult]:
    """Prune ``model`` in place, block by block. Yields events; returns a :class:`PruneResult`.

    ``input_ids`` is the ``[nsamples, seqlen]`` calibration tensor (unused by magnitude without
    OWL). On cancellation :class:`Cancelled` is raised between modules and the model is marked
    incomplete (``is_incomplete(model)``), so it is never exported as a pruned model.
    """
    device = torch.device(device)
    t_start = time.perf_counter()
    lay = architecture.layout(model, cfg.skip_modules)
    nblocks = len(lay.blocks)
    n, m = cfg.nm
    if not lay.module_names:
        raise ConfigError("Every prunable module is excluded by the skip list; nothing to prune.")
    for name in lay.module_names:
        if n and m:
            check_nm(n, m, architecture.in_features(lay.blocks[0].get_submodule(name)), name)
    if cfg.block_sparsity is not None and len(cfg.block_sparsity) != nblocks:
        raise ConfigError(f"{len(cfg.block_sparsity)} per-block sparsities given, the model has {nblocks} blocks.")
    needs = stats_needs(cfg)
    if cfg.owl and needs is None:
        needs = StatsNeeds(sq_norm=True)
    if needs is not None and input_ids is None:
        raise ConfigError(f"{cfg.method} needs calibration data.")
    targets = list(cfg.block_sparsity) if cfg.block_sparsity is not None else [cfg.sparsity] * nblocks
    seconds: dict[str, float] = {}
    notes: list[str] = []
    nsamples, seqlen = (tuple(input_ids.shape) if input_ids is not None else (0, 0))
    mark_incomplete(model, True)
    model_was_training = model.training
    model.eval()

    yield RunStarted(method=cfg.label(), num_blocks=nblocks, module_names=lay.module_names,
                     block_sparsity=tuple(targets), nsamples=nsamples, seqlen=seqlen, device=str(device))

    inputs: BlockInputs | None = None
    where: dict[str, torch.device] = {}
    block_home = [next(b.parameters()).device for b in lay.blocks]
    owl_info = None
    try:
        with torch.no_grad():
            if needs is not None:
                t0 = time.perf_counter()
                yield PhaseStarted("capture", total=1)
                inputs, where = capture_first_block_inputs(
                    model, lay.path, lay.blocks[0], input_ids, cfg.batch_size, device, should_stop)
                seconds["capture"] = time.perf_counter() - t0
                yield PhaseDone("capture", seconds["capture"])

            if cfg.owl:
                t0 = time.perf_counter()
                assert inputs is not None
                ratios = yield from _owl_prepass(lay, inputs, device, cfg, should_stop)
                from .methods.owl import owl_allocation, owl_nm_allocation

                targets = owl_allocation(ratios, cfg.sparsity, cfg.owl_lambda)
                block_n: list[int] = []
                if n and m:
                    block_n = owl_nm_allocation(targets, m)
                    targets = [bn / m for bn in block_n]
                    notes.append(
                        f"OWL with {n}:{m} gives each block its own N (from {min(block_n)}:{m} to "
                        f"{max(block_n)}:{m}); the model is not a strict {n}:{m} model and "
                        f"{n}:{m} sparse kernels cannot run it as one."
                    )
                owl_info = {"outlier_ratios": list(ratios), "block_sparsity": list(targets),
                            "block_n": block_n, "m": cfg.owl_m, "lambda": cfg.owl_lambda}
                seconds["owl"] = time.perf_counter() - t0
                yield AllocationComputed(tuple(ratios), tuple(targets), tuple(block_n))

            t_prune = time.perf_counter()
            layers: list[dict[str, Any]] = []
            module_info: dict[str, dict[str, Any]] = {}
            zeros_total = 0
            numel_total = 0
            for bi, block in enumerate(lay.blocks):
                if should_stop():
                    raise Cancelled()
                tb = time.perf_counter()
                s = targets[bi]
                yield BlockStarted(bi, nblocks, s)
                try:
                    block.to(device)
                    stats = None
                    if needs is not None:
                        assert inputs is not None
                        stats = _BlockStats(block, lay.module_names, needs, device)
                        try:
                            for i in range(len(inputs.hidden)):
                                run_block(block, inputs, i)
                                stats.after_batch()
                                if should_stop():
                                    raise Cancelled()
                        finally:
                            stats.close()
                    block_sparsity: dict[str, float] = {}
                    bz = bn_ = 0
                    for name in lay.module_names:
                        if should_stop():
                            raise Cancelled()
                        tm = time.perf_counter()
                        mod = block.get_submodule(name)
                        w = architecture.get_weight_2d(mod).detach().to(torch.float32)
                        st = stats.stats[name] if stats is not None else None
                        if n and m:
                            n_blk = max(1, min(m - 1, round(s * m))) if cfg.owl else n
                            outcome = prune_module(w, st, n_blk / m, cfg, n_blk, m, seqlen, name)
                        else:
                            outcome = prune_module(w, st, s, cfg, seqlen=seqlen, name=name)
                        architecture.set_weight_2d(mod, outcome.weight)
                        architecture.apply_mask(mod, outcome.mask)  # exact zeros whatever the dtype
                        z = int(outcome.mask.sum().item())
                        achieved = z / outcome.mask.numel()
                        block_sparsity[name] = achieved
                        bz += z
                        bn_ += outcome.mask.numel()
                        info = dict(outcome.info)
                        if info.get("damping_increased"):
                            notes.append(f"Block {bi} {name}: the Hessian was not positive definite; "
                                         f"damping raised to {info['damping']:.3g}.")
                        module_info[f"{bi}.{name}"] = info
                        if previews:
                            info = {**info, **_preview(outcome.mask)}
                        del st
                        yield ModulePruned(bi, name, achieved, time.perf_counter() - tm,
                                           tuple(outcome.mask.shape), info)
                    if stats is not None:
                        del stats
                    if inputs is not None and bi + 1 < nblocks:
                        for i in range(len(inputs.hidden)):
                            inputs.hidden[i] = run_block(block, inputs, i)
                            if should_stop():
                                raise Cancelled()
                except Exception as e:
                    if _is_oom(e):
                        raise BlockOutOfMemory(
                            f"Out of memory on {device} while pruning block {bi}.",
                            hint="Use fewer calibration samples, a shorter sequence length, a smaller "
                                 "batch size, or keep offload on.",
                            details=str(e)) from e
                    raise
                finally:
                    if cfg.offload and block_home[bi] != device:
                        block.to(block_home[bi])
                        empty_cache(device)
                zeros_total += bz
                numel_total += bn_
                layers.append({"index": bi, "modules": block_sparsity})
                yield BlockDone(bi, bz / max(bn_, 1), time.perf_counter() - tb, dict(block_sparsity))
            seconds["prune"] = time.perf_counter() - t_prune
    finally:
        inputs = None
        restore_outside(model, where)
        empty_cache(device)
        model.train(model_was_training)

    mark_incomplete(model, False)
    seconds["total"] = time.perf_counter() - t_start
    gs = zeros_total / max(numel_total, 1)
    yield RunFinished(gs, seconds["total"])
    return PruneResult(
        method=cfg.label(), sparsity_target=cfg.sparsity, structure=cfg.structure,
        block_sparsity=[float(x) for x in targets], layers=layers, global_sparsity=gs,
        seconds=seconds, module_info=module_info, owl=owl_info, notes=notes,
    )


def _owl_prepass(lay: architecture.BlockLayout, inputs: BlockInputs, device: torch.device,
                 cfg: PruneConfig, should_stop: Callable[[], bool]) -> Generator[Event, None, list[float]]:
    """Dense pass over all blocks: the outlier ratio of each block's Wanda scores (OWL)."""
    from .methods.basic import wanda_scores
    from .methods.owl import outlier_ratio

    yield PhaseStarted("owl", total=len(lay.blocks))
    hidden = [h.clone() for h in inputs.hidden]
    replay = BlockInputs(hidden, inputs.args, inputs.kwargs)
    ratios: list[float] = []
    for bi, block in enumerate(lay.blocks):
        home = next(block.parameters()).device
        block.to(device)
        stats = _BlockStats(block, lay.module_names, StatsNeeds(sq_norm=True), device)
        try:
            for i in range(len(hidden)):
                if should_stop():
                    raise Cancelled()
                replay.hidden[i] = run_block(block, replay, i)
                stats.after_batch()
        finally:
            stats.close()
        scores = [wanda_scores(architecture.get_weight_2d(block.get_submodule(nm)).float(), stats.stats[nm])
                  for nm in lay.module_names]
        ratios.append(outlier_ratio(scores, cfg.owl_m))
        if cfg.offload and home != device:
            block.to(home)
        yield Message(f"OWL: block {bi} outlier ratio {ratios[-1]:.4%}")
    return ratios


def run_to_completion(gen: Generator[Event, None, Any], on_event: Callable[[Event], None] | None = None) -> Any:
    """Drain an event generator, optionally forwarding events; return its result."""
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(ev)
