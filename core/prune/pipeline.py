"""The layer-by-layer pruning pipeline, as a generator of typed events.

``iter_prune`` captures the inputs of the first decoder block, then for every block: moves it to
the compute device, gathers the statistics its method needs with forward pre-hooks, prunes its
modules one by one (checking for cancellation between modules), and replays the pruned block to
produce the next block's inputs. Only the current block and the activations live on the compute
device; statistics are float32, activations stay in the model's dtype.

Passes over the data, per block: none for a method without statistics (magnitude); for the
others either two (a statistics pass with the dense block, then an output pass with the pruned
one: the reference order) or one (``core/prune/lockstep.py``: every module pruned as soon as all
batches have reached it), as ``PruneConfig.passes_once`` says; plus one dense pre-pass for OWL,
which must know every block's outliers before it can allocate sparsity. One pass falls back to
two when it would not fit in memory, or when a module runs twice per forward pass.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Generator

import torch
from torch import nn

from ..config import PruneConfig
from ..errors import Cancelled, ConfigError
from ..events import (
    AllocationComputed,
    BlockDone,
    BlockStarted,
    Event,
    Message,
    PhaseDone,
    PhaseStarted,
    RunFinished,
    RunStarted,
)
from ..model import architecture, offload
from ..model import experts as fused
from ..model.devices import empty_cache, host_allocator_for_run, is_out_of_memory
from .block import BlockOutOfMemory, BlockRun, BlockStats, RedoBlock
from .capture import BlockInputs, capture_first_block_inputs, run_block
from .memory import host_memory_tight, module_shapes, one_pass_fits
from .methods import stats_needs
from .methods.masks import check_nm
from .needs import StatsNeeds
from .result import PruneResult, mark_incomplete

# Read module results back from the device once per block instead of once per module. None: on
# every device but the CPU (where reading back costs nothing). Tests set it to exercise the
# accelerator path on the CPU.
DEFER_HOST_READS: bool | None = None



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
    empty = [bi for bi in range(nblocks) if not lay.names_of(bi)]
    if cfg.owl and empty:
        raise ConfigError(f"OWL compares the blocks by their modules' outliers, but the skip list leaves block "
                          f"{empty[0]} nothing to prune; skip fewer modules or turn OWL off.")
    if n and m:
        checked: set[tuple[str, int]] = set()
        for bi, block in enumerate(lay.blocks):
            for name in lay.names_of(bi):
                width = architecture.weight_shape(block, name)[1]
                if (name, width) not in checked:
                    checked.add((name, width))
                    check_nm(n, m, width, name)
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

    one_pass = cfg.passes_once and needs is not None
    has_experts = any(fused.split_name(nm) is not None for nm in lay.module_names)
    if one_pass and has_experts:
        one_pass = False
        notes.append("Blocks with fused experts are pruned with two passes per block (the one-pass order "
                     "does not reach inside the experts yet), so every block was.")
    info: dict[str, Any] | None = None
    dtype_bytes = next(lay.blocks[0].parameters()).element_size()
    if one_pass:
        info = _memory_info(model)
        one_pass, why = one_pass_fits(info, nsamples, seqlen, cfg, dtype_bytes, cfg.batch_size,
                                      cfg.owl, cfg.offload_mode, str(device))
        if not one_pass:
            notes.append(why + " Pruned with two passes per block.")
    if device.type == "cpu":
        # freed activations are kept for reuse unless memory is tight (see devices.limit_host_allocator_retention)
        info = info if info is not None else _memory_info(model)
        host_allocator_for_run(host_memory_tight(info, nsamples, seqlen, cfg, dtype_bytes, cfg.batch_size, cfg.owl,
                                                 cfg.offload_mode, one_pass))

    yield RunStarted(method=cfg.label(), num_blocks=nblocks, module_names=lay.module_names,
                     block_sparsity=tuple(targets), nsamples=nsamples, seqlen=seqlen, device=str(device),
                     block_module_names=tuple(lay.names_of(bi) for bi in range(nblocks)))
    if notes:
        yield Message(notes[-1], level="warning")

    inputs: BlockInputs | None = None
    where: dict[str, torch.device] = {}
    store = offload.store_of(model)  # blocks memory-mapped from disk (offload "disk"), or None
    block_home = [next(b.parameters()).device for b in lay.blocks]
    if store is not None:
        store.check_space(sum(targets) / max(len(targets), 1))
    if cfg.offload_mode == "disk" and store is None:
        notes.append("Disk offload needs the model loaded with it (load_model(..., offload='disk')); "
                     "this model is already in memory, so blocks were offloaded to host memory.")
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
                ratios = yield from _owl_prepass(lay, inputs, device, cfg, should_stop, store)
                from .methods.owl import owl_allocation, owl_nm_allocation

                block_n: list[int] = []
                if n and m:  # N around the structure's N (lambda in N units: lambda * M); --sparsity unused
                    block_n = owl_nm_allocation(ratios, n, m, cfg.owl_lambda)
                    targets = [bn / m for bn in block_n]
                    if min(block_n) != max(block_n):
                        notes.append(
                            f"OWL with {n}:{m} gives each block its own N (from {min(block_n)}:{m} to "
                            f"{max(block_n)}:{m}, mean {n}); the model is not a strict {n}:{m} model "
                            f"and {n}:{m} sparse kernels cannot run it as one."
                        )
                    else:
                        why = (f"lambda * M = {cfg.owl_lambda * m:g} is under one step of N"
                               if cfg.owl_lambda * m < 1 - 1e-9 else
                               f"{m - 1}:{m} is the only N:{m} pattern" if m == 2 else
                               "the blocks' outlier ratios are equal")
                        notes.append(f"OWL with {n}:{m} kept every block at {n}:{m}: {why}.")
                else:
                    targets = owl_allocation(ratios, cfg.sparsity, cfg.owl_lambda)
                owl_info = {"outlier_ratios": list(ratios), "block_sparsity": list(targets),
                            "block_n": block_n, "m": cfg.owl_m, "lambda": cfg.owl_lambda}
                seconds["owl"] = time.perf_counter() - t0
                yield AllocationComputed(tuple(ratios), tuple(targets), tuple(block_n))

            t_prune = time.perf_counter()
            layers: list[dict[str, Any]] = []
            module_info: dict[str, dict[str, Any]] = {}
            zeros_total = 0
            numel_total = 0
            # On an accelerator the per-module loop never waits for the device: counts, previews and
            # SparseGPT's positive-definiteness checks are gathered on the device and read back
            # once per block (one synchronisation), then the block's ModulePruned events follow.
            defer = device.type != "cpu" if DEFER_HOST_READS is None else DEFER_HOST_READS
            # the last module of a block of each kind (its module names) and its calls per batch
            last_hints: dict[tuple[str, ...], tuple[str, int] | None] = {}
            # kinds of block (module names) already pruned in one pass: a kind's first block keeps
            # its original weights until it is known to work in one pass
            one_pass_kinds: set[tuple[str, ...]] = set()
            for bi, block in enumerate(lay.blocks):
                if should_stop():
                    raise Cancelled()
                tb = time.perf_counter()
                s = targets[bi]
                yield BlockStarted(bi, nblocks, s)
                saved = False
                try:
                    if store is not None:
                        store.acquire(bi, device)
                    else:
                        block.to(device)
                    run = BlockRun(block, bi, s, cfg, n, m, seqlen, defer, previews)
                    run.should_stop = should_stop
                    names = lay.names_of(bi)
                    if inputs is not None:
                        inputs.select(bi)
                    if needs is not None and one_pass:
                        assert inputs is not None
                        first = names not in one_pass_kinds
                        try:
                            outputs = yield from run.one_pass(inputs, names, needs, device, should_stop,
                                                              first=first)
                        except RedoBlock as redo:
                            run.restore()
                            run = BlockRun(block, bi, s, cfg, n, m, seqlen, defer, previews, sync=True)
                            outputs = None
                            if redo.two_pass:
                                one_pass = False
                                notes.append(f"Block {bi}: {redo.reason} " + (
                                    "Every block was pruned with the two-pass order." if bi == 0 else
                                    "It and every later block were pruned with the two-pass order."))
                            else:
                                outputs = yield from run.one_pass(inputs, names, needs, device,
                                                                  should_stop, first=first)
                        if outputs is not None:
                            one_pass_kinds.add(names)
                    else:
                        outputs = None
                    if outputs is None:
                        stats = None
                        if needs is not None:
                            assert inputs is not None
                            stats = BlockStats(block, names, needs, device, last_hint=last_hints.get(names),
                                               expert_min_tokens=cfg.expert_min_tokens)
                            try:
                                for i in range(len(inputs.hidden)):
                                    stats.run(inputs, i)
                                    if should_stop():
                                        raise Cancelled()
                                stats.top_up(inputs, should_stop)
                            finally:
                                stats.close()
                            last_hints[names] = stats.last_module
                        for name in names:
                            if should_stop():
                                raise Cancelled()
                            yield from run.prune(name, stats.stats[name] if stats is not None else None)
                        run.shared.clear()
                        yield from run.settle(stats.stats if stats is not None else {})
                        del stats
                        if inputs is not None and bi + 1 < nblocks:
                            for i in range(len(inputs.hidden)):
                                inputs.hidden[i] = run_block(block, inputs, i)
                                if should_stop():
                                    raise Cancelled()
                    elif bi + 1 < nblocks:
                        inputs.hidden = outputs  # type: ignore[union-attr]
                    del outputs
                    block_sparsity, bz, bn_ = run.block_sparsity, run.zeros, run.numel
                    module_info.update(run.module_info)
                    notes.extend(run.notes)
                    saved = True
                except Exception as e:
                    if is_out_of_memory(e):
                        raise BlockOutOfMemory(
                            f"Out of memory on {device} while pruning block {bi}.",
                            hint=("Turn off one pass per block (--two-pass): it keeps every batch's "
                                  "activations inside the block at once. " if one_pass else "")
                                 + "Use fewer calibration samples, a shorter sequence length, a smaller "
                                 "batch size, or keep offload on.",
                            details=str(e)) from e
                    raise
                finally:
                    if store is not None:
                        store.release(bi, save=saved)
                    elif cfg.offload and block_home[bi] != device:
                        block.to(block_home[bi])
                    empty_cache(device)
                zeros_total += bz
                numel_total += bn_
                layers.append({"index": bi, "modules": block_sparsity})
                yield BlockDone(bi, bz / max(bn_, 1), time.perf_counter() - tb, dict(block_sparsity))
            seconds["prune"] = time.perf_counter() - t_prune
    finally:
        inputs = None
        offload.restore_outside(model, where)
        empty_cache(device)
        model.train(model_was_training)

    mark_incomplete(model, False)
    short = _experts_short_of_tokens(module_info)
    if short:
        notes.append(short)
        yield Message(short)
    seconds["total"] = time.perf_counter() - t_start
    gs = zeros_total / max(numel_total, 1)
    yield RunFinished(gs, seconds["total"])
    return PruneResult(
        method=cfg.label(), sparsity_target=cfg.sparsity, structure=cfg.structure,
        block_sparsity=[float(x) for x in targets], layers=layers, global_sparsity=gs,
        seconds=seconds, module_info=module_info, owl=owl_info, notes=notes,
    )


def _memory_info(model: nn.Module) -> dict[str, Any]:
    """What :mod:`.memory`'s estimates read of a model: its description and module shapes."""
    from ..model.loading import describe

    return {**describe(model), "module_shapes": module_shapes(model)}


def _experts_short_of_tokens(module_info: dict[str, dict[str, Any]]) -> str:
    """A note on the experts that received too few routed tokens (``core/prune/experts.py``), or ""."""
    seen: dict[str, tuple[int, int, int]] = {}  # "block.path" -> (short, experts, min_tokens)
    for key, info in module_info.items():
        ex = info.get("experts") if isinstance(info, dict) else None
        if not ex or not ex.get("rule"):
            continue
        where = key.split("[*]", 1)[0]
        seen[where] = (sum(r != "routed" for r in ex["rule"]), len(ex["rule"]), int(ex.get("min_tokens") or 0))
    short = {k: v for k, v in seen.items() if v[0]}
    if not short:
        return ""
    n = sum(v[0] for v in short.values())
    total = sum(v[1] for v in seen.values())
    k = max(v[2] for v in short.values())
    blocks = ", ".join(w.split(".", 1)[0] for w in list(short)[:8]) + (", ..." if len(short) > 8 else "")
    return (f"{n} of {total} experts received fewer than {max(k, 1)} routed calibration tokens and were pruned "
            f"with statistics from all the tokens of their block (blocks {blocks}); "
            "module_info lists each expert's tokens.")


def _owl_prepass(lay: architecture.BlockLayout, inputs: BlockInputs, device: torch.device,
                 cfg: PruneConfig, should_stop: Callable[[], bool],
                 store: "offload.DiskBlockStore | None" = None) -> Generator[Event, None, list[float]]:
    """Dense pass over all blocks: the outlier ratio of each block's Wanda scores (OWL)."""
    from .methods.basic import wanda_scores
    from .methods.owl import outlier_ratio

    yield PhaseStarted("owl", total=len(lay.blocks))
    hidden = [h.clone() for h in inputs.hidden]
    replay = BlockInputs(hidden, inputs.args, inputs.kwargs, inputs.per_block)
    ratios: list[float] = []
    for bi, block in enumerate(lay.blocks):
        home = next(block.parameters()).device
        names = lay.names_of(bi)
        replay.select(bi)
        if store is not None:
            store.acquire(bi, device)
        else:
            block.to(device)
        try:
            stats = BlockStats(block, names, StatsNeeds(sq_norm=True), device, early_stop=False,
                               expert_min_tokens=cfg.expert_min_tokens)
            try:
                for i in range(len(hidden)):
                    if should_stop():
                        raise Cancelled()
                    replay.hidden[i] = run_block(block, replay, i)
                    stats.after_batch()
            finally:
                stats.close()
            scores = []
            for nm in names:
                split = fused.split_name(nm)
                if split is None:
                    scores.append(wanda_scores(architecture.get_weight_2d(block.get_submodule(nm)).float(),
                                               stats.stats[nm]))
                    continue
                # every expert that received tokens, with its routed statistics (an expert short of
                # tokens counts with what it saw; one that saw none is left out of the ratio)
                es, module = stats.experts[split[0]], block.get_submodule(split[0])
                for e in range(es.E):
                    st = es.input[e] if fused.split_name(nm)[1] != "down_proj" else es.hidden[e]
                    if st is not None:
                        scores.append(wanda_scores(fused.expert_weight(module, split[1], e).float(), st))
            ratios.append(outlier_ratio(scores, cfg.owl_m))
            del scores, stats
        finally:
            if store is not None:
                store.release(bi, save=False)
            elif cfg.offload and home != device:
                block.to(home)
            empty_cache(device)
        yield Message(f"OWL: block {bi} outlier ratio {ratios[-1]:.4%}")
    return ratios
