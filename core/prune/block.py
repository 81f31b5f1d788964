"""One decoder block's pruning: the statistics hooks on its modules, each module pruned by its
method, the results read back (at once, or deferred to once per block on an accelerator), and the
events and report numbers of the block. :func:`~.pipeline.iter_prune` drives it block by block.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Generator

import numpy as np
import torch
from torch import nn

from ..config import PruneConfig
from ..errors import Cancelled, PruneStudioError
from ..events import (
    Event,
    ModulePruned,
    run_to_completion,  # noqa: F401 - callers import it from here too
)
from ..model import architecture
from ..model import experts as fused
from ..model.devices import threads_for_matrix
from . import output_error
from .capture import BlockInputs, run_block
from .experts import ExpertStats, prune_experts
from .methods import SharedInputCache, prune_module
from .methods.registry import defers_sync
from .needs import StatsNeeds
from .stats import InputStats

__all__ = ["BlockOutOfMemory", "BlockStats", "BlockRun", "RedoBlock"]


class BlockOutOfMemory(PruneStudioError):
    """The compute device ran out of memory while working on a block."""


class _StopBlock(Exception):
    """Raised by a statistics hook once the last module of a block has recorded its input."""


class BlockStats:
    """Hooks that feed :class:`InputStats`; modules seeing the same input tensor share one.

    The statistics pass needs the inputs of the block's modules, not its output: each batch stops
    as soon as the block's last module has recorded its input, so e.g. Llama's ``down_proj``
    product and the residual after it are never computed in this pass. The last module is learnt
    from the first block's first batch (a full forward) and passed on to the next blocks of the same
    kind (``last_hint``; the pipeline keeps one per list of module names, as a hybrid's blocks
    differ; a hint naming a module this block lacks is ignored, a wrong one falls back to a full
    first batch).
    """

    def __init__(self, block: nn.Module, names: tuple[str, ...], needs: StatsNeeds, device: torch.device,
                 early_stop: bool = True, last_hint: tuple[str, int] | None = None, expert_min_tokens: int = 32):
        self.block, self.needs, self.device = block, needs, device
        # fused experts (``mlp.experts[*].down_proj``): their statistics come from the experts'
        # routed forward, one ExpertStats per experts module, shared by its matrix kinds
        self.experts: dict[str, ExpertStats] = {}
        by_path: dict[str, list[str]] = {}
        for name in names:
            split = fused.split_name(name)
            if split is not None:
                by_path.setdefault(split[0], []).append(split[1])
        for path, kinds in by_path.items():
            self.experts[path] = ExpertStats(block.get_submodule(path), path, tuple(kinds), needs, device,
                                             expert_min_tokens)
        names = tuple(n for n in names if fused.split_name(n) is None)
        self.names = names
        # the experts may run after the block's last linear layer: no early stop in their blocks
        early_stop = early_stop and not self.experts
        self.early_stop = early_stop
        self._hint = last_hint if early_stop and last_hint is not None and last_hint[0] in names else None
        self.stats: dict[str, InputStats] = {}
        self._handles: list[Any] = []
        self._first: dict[str, torch.Tensor] = {}
        self._order: list[str] = []  # hook firings of the first batch, in order
        # the module that runs last, and how often it runs per batch: learnt from the first batch,
        # or given by an earlier block of the same kind so even the first batch stops early
        self._last: str | None = self._hint[0] if self._hint else None
        self._last_calls = self._hint[1] if self._hint else 0
        self._seen_last = 0
        for name in names:
            mod = block.get_submodule(name)
            self._handles.append(mod.register_forward_pre_hook(self._recorder(name)))
        for path, es in self.experts.items():
            es.install()
            for kind in es.kinds:
                self.stats[fused.expert_name(path, kind)] = es  # type: ignore[assignment]
        self._grouped = False

    def _recorder(self, name: str, record: bool = True) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if not self._grouped:
                self._first.setdefault(name, x)  # kept alive until grouping, so storage identity is exact
                self._order.append(name)
            elif record and name in self.stats:
                self.stats[name].add(x)
            if name == self._last:
                self._seen_last += 1
                if self._seen_last >= self._last_calls:
                    raise _StopBlock
            return None

        return hook

    def run(self, inputs: BlockInputs, i: int) -> None:
        """Forward batch ``i`` through the block for its statistics (the output is not needed)."""
        self._seen_last = 0
        try:
            run_block(self.block, inputs, i)
        except _StopBlock:
            pass
        if not self._grouped and self._hint and any(n not in self._first for n in self.names):
            # the hint was wrong for this block: run the first batch to the end instead
            self._hint, self._last, self._last_calls = None, None, 0
            self._first.clear()
            self._order.clear()
            run_block(self.block, inputs, i)
        self.after_batch()

    @property
    def last_module(self) -> tuple[str, int] | None:
        """(name, calls per batch) of the block's last module, once known: a hint for the next block."""
        return (self._last, self._last_calls) if self._last is not None else None

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
        # only leaders keep recording hooks from now on (plus a stop-only hook on the last module)
        for h in self._handles:
            h.remove()
        self._handles = []
        last = self._hint[0] if self._hint else (self._order[-1] if self._order else None)
        for name in leaders.values():
            mod = self.block.get_submodule(name)
            self._handles.append(mod.register_forward_pre_hook(self._recorder(name)))
        if self.early_stop and last is not None and last not in leaders.values():
            mod = self.block.get_submodule(last)
            self._handles.append(mod.register_forward_pre_hook(self._recorder(last, record=False)))
        if self.early_stop and last is not None and self._hint is None:
            self._last, self._last_calls = last, self._order.count(last)
        self._first.clear()
        self._order.clear()
        self._grouped = True

    def top_up(self, inputs: BlockInputs, should_stop: Callable[[], bool]) -> None:
        """After the statistics pass: when an expert received too few tokens, one more pass through
        the block gathers those experts' activations on every token (``core/prune/experts.py``)."""
        todo = [es for es in self.experts.values() if es.needs_top_up()]
        if not todo:
            return
        for h in self._handles:  # the linear layers' statistics are complete
            h.remove()
        self._handles = []
        for es in todo:
            es.begin_top_up()
        try:
            for i in range(len(inputs.hidden)):
                if should_stop():
                    raise Cancelled()
                run_block(self.block, inputs, i)
        finally:
            for es in todo:
                es.end_top_up()

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._first.clear()
        for es in self.experts.values():
            es.remove()


def _prune_one(mod: nn.Module, st: InputStats | None, s: float, cfg: PruneConfig, n_blk: int, m: int,
               seqlen: int, name: str, sync: bool, shared: SharedInputCache | None = None) -> Any:
    """Prune one module in place (new weights written back, exact zeros applied); returns the outcome."""
    w = architecture.get_weight_2d(mod).detach().to(torch.float32)
    with threads_for_matrix(w):  # one thread for a small matrix's kernels: see devices.one_cpu_thread
        dense = output_error.dense_outputs(st, w)  # before anything is written back
        if n_blk and m:
            outcome = prune_module(w, st, n_blk / m, cfg, n_blk, m, seqlen, name, sync=sync, shared=shared)
        else:
            outcome = prune_module(w, st, s, cfg, seqlen=seqlen, name=name, sync=sync, shared=shared)
        if outcome.weight is not None:
            architecture.set_weight_2d(mod, outcome.weight)
        architecture.apply_mask(mod, outcome.mask)  # exact zeros whatever the dtype
        if dense is not None:
            err = output_error.measure(st, dense, architecture.get_weight_2d(mod))
            outcome.info["output_error"] = err["output_error"]
            outcome.info["_row_error"] = err["row_error"]
    return outcome


class _Pending:
    """A pruned module's outcome until its numbers are on the host."""

    def __init__(self, name: str, outcome: Any, seconds: float, original: torch.Tensor | None,
                 n_blk: int) -> None:
        self.name, self.outcome, self.seconds, self.original, self.n_blk = name, outcome, seconds, original, n_blk
        outcome.weight = None  # already written into the module
        self.numel = outcome.mask.numel()
        self._preview_host: dict[str, np.ndarray] | None = None
        self.shape = tuple(outcome.mask.shape)
        self.zeros = 0
        self._z: torch.Tensor | None = None
        self._preview: tuple[torch.Tensor, torch.Tensor] | None = None

    def defer(self, previews: bool) -> None:
        """Start the device-side reductions; nothing is read back yet."""
        self._z = self.outcome.mask.sum()
        if previews:
            self._preview = _preview_tensors(self.outcome.mask)

    def host_numbers(self) -> list[torch.Tensor]:
        ok = self.outcome.ok if self.outcome.ok is not None else torch.ones((), dtype=torch.bool,
                                                                            device=self.outcome.mask.device)
        err = self.outcome.info.get("error")
        err = err if isinstance(err, torch.Tensor) else torch.zeros((), device=self.outcome.mask.device)
        assert self._z is not None
        return [self._z.double(), ok.double(), err.double()]


def _settle(pending: list[_Pending], block: nn.Module, stats: dict[str, InputStats], s: float,
            cfg: PruneConfig, m: int, seqlen: int) -> None:
    """One device synchronisation for the whole block; redo any SparseGPT module whose Hessian
    needed more damping (rare) with the synchronous path."""
    flat = torch.stack([t for p in pending for t in p.host_numbers()]).tolist()
    previews_host = [(_to_host(p._preview) if p._preview is not None else None) for p in pending]
    for j, p in enumerate(pending):
        z, ok, err = flat[3 * j: 3 * j + 3]
        p.zeros = int(z)
        if "error" in p.outcome.info and isinstance(p.outcome.info["error"], torch.Tensor):
            p.outcome.info["error"] = float(err)
        p._preview_host = previews_host[j]
        if not ok:
            mod = block.get_submodule(p.name)
            assert p.original is not None
            architecture.set_weight_2d(mod, p.original)
            st = stats.get(p.name)
            p.outcome = _prune_one(mod, st, s, cfg, p.n_blk, m, seqlen, p.name, True)
            p.zeros = int(p.outcome.mask.sum().item())
            if p._preview_host is not None:
                p._preview_host = _preview(p.outcome.mask)
        p.original = None


def _finish_module(p: _Pending, bi: int, block_sparsity: dict[str, float], module_info: dict[str, Any],
                   notes: list[str], previews: bool) -> ModulePruned:
    outcome = p.outcome
    if p._z is None:  # synchronous path (CPU)
        with threads_for_matrix(outcome.mask):
            p.zeros = int(outcome.mask.sum().item())
            if previews:
                p._preview_host = _preview(outcome.mask)
    achieved = p.zeros / p.numel
    block_sparsity[p.name] = achieved
    info = dict(outcome.info)
    row_error = info.pop("_row_error", None)
    if isinstance(info.get("output_error"), torch.Tensor):
        info["output_error"] = float(info["output_error"])
    if info.get("damping_increased"):
        notes.append(f"Block {bi} {p.name}: the Hessian was not positive definite; "
                     f"damping raised to {info['damping']:.3g}.")
    module_info[f"{bi}.{p.name}"] = info
    if previews:
        pv = p._preview_host
        info = {**info, **(pv if pv is not None else _preview(outcome.mask))}
        if row_error is not None:
            info["row_error"] = row_error.float().cpu().numpy().astype(np.float32)
    p.outcome = None
    return ModulePruned(bi, p.name, achieved, p.seconds, p.shape, info)


def _preview_tensors(mask: torch.Tensor, size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    m = mask.float()
    rows = m.mean(dim=1)
    img = torch.nn.functional.adaptive_avg_pool2d(m[None, None], (min(size, m.shape[0]), min(size, m.shape[1])))[0, 0]
    return rows, img


def _to_host(t: tuple[torch.Tensor, torch.Tensor]) -> dict[str, np.ndarray]:
    return {"row_sparsity": t[0].cpu().numpy().astype(np.float32),
            "mask_image": t[1].cpu().numpy().astype(np.float32)}


def _preview(mask: torch.Tensor, size: int = 96) -> dict[str, np.ndarray]:
    """Downsampled density image and per-row sparsity of a mask, for the GUI."""
    return _to_host(_preview_tensors(mask, size))


class RedoBlock(Exception):
    """A block pruned in one pass must be pruned again: in the two-pass order (a module runs twice
    per forward pass), or synchronously (a deferred SparseGPT Hessian needed more damping)."""

    def __init__(self, reason: str, two_pass: bool) -> None:
        super().__init__(reason)
        self.reason, self.two_pass = reason, two_pass


class BlockRun:
    """The pruning of one block's modules: outcomes, events and the numbers for the report."""

    def __init__(self, block: nn.Module, bi: int, s: float, cfg: PruneConfig, n: int, m: int,
                 seqlen: int, defer: bool, previews: bool, sync: bool = False) -> None:
        self.block, self.bi, self.s, self.cfg, self.n, self.m = block, bi, s, cfg, n, m
        self.force_sync = sync
        self.seqlen, self.defer, self.previews = seqlen, defer, previews
        self.pending: list[_Pending] = []
        self.block_sparsity: dict[str, float] = {}
        self.module_info: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.zeros = self.numel = 0
        self.originals: dict[str, torch.Tensor] = {}  # one-pass only: weights before pruning
        self.shared = SharedInputCache()  # e.g. one SparseGPT factor for q/k/v
        self.should_stop: Callable[[], bool] = lambda: False  # checked between experts
        self._experts_done: dict[str, tuple[dict[str, Any], float]] = {}  # fused experts pruned, not yet reported

    def prune(self, name: str, st: InputStats | None, keep_original: bool = False) -> Generator[Event, None, None]:
        """Prune module ``name``; its event now, or (deferred) after :meth:`settle`."""
        tm = time.perf_counter()
        cfg, m = self.cfg, self.m
        if fused.split_name(name) is not None:
            yield from self._prune_experts(name, st)
            return
        mod = self.block.get_submodule(name)
        n_blk = self._block_n()
        sync = self.force_sync or not (self.defer and defers_sync(cfg))
        original = None
        if not sync or keep_original:
            original = architecture.get_weight_2d(mod).detach().clone()
            self.originals[name] = original
        outcome = _prune_one(mod, st, self.s, cfg, n_blk, m, self.seqlen, name, sync, self.shared)
        p = _Pending(name, outcome, time.perf_counter() - tm, original if not sync else None, n_blk)
        if self.defer:
            p.defer(self.previews)
            self.pending.append(p)
            return
        yield self._finish(p)

    def _block_n(self) -> int:
        """The N of this block's N:M pattern (OWL gives each block its own); 0 when unstructured."""
        m = self.m
        return (max(1, min(m - 1, round(self.s * m))) if self.cfg.owl else self.n) if self.n and m else 0

    def _prune_experts(self, name: str, st: Any) -> Generator[Event, None, None]:
        """Every expert's matrix ``name`` (``mlp.experts[*].down_proj``): one event for all of them.
        With statistics, the first kind asked for prunes all the kinds of its experts module expert
        by expert (gate and up share their input's derived values); the others' events follow."""
        path, kind = fused.split_name(name)  # type: ignore[misc]
        if name not in self._experts_done:
            tm = time.perf_counter()
            kinds = st.kinds if isinstance(st, ExpertStats) else (kind,)
            n_blk = self._block_n()
            s = n_blk / self.m if n_blk else self.s
            results = prune_experts(self.block.get_submodule(path), path, kinds,
                                    st if isinstance(st, ExpertStats) else None, s, self.cfg, n_blk,
                                    self.m if n_blk else 0, self.seqlen, self.should_stop)
            seconds = (time.perf_counter() - tm) / len(kinds)
            for k, r in results.items():
                self._experts_done[fused.expert_name(path, k)] = (r, seconds)
        r, seconds = self._experts_done.pop(name)
        achieved = r["zeros"] / max(r["numel"], 1)
        self.block_sparsity[name] = achieved
        self.zeros += r["zeros"]
        self.numel += r["numel"]
        info = dict(r["info"])
        module_info_entry = dict(info)
        self.module_info[f"{self.bi}.{name}"] = module_info_entry
        damped = info.get("damping_increased_experts", [])
        if damped:
            self.notes.append(f"Block {self.bi} {name}: the Hessian of {len(damped)} expert(s) (first: "
                              f"{damped[0]}) was not positive definite; damping was raised.")
        mask = r["mask"]
        if self.previews and mask is not None:
            info.update(_preview(mask))
            info["preview_expert"] = 0
        yield ModulePruned(self.bi, name, achieved, seconds, tuple(mask.shape) if mask is not None else (0, 0), info)

    def _finish(self, p: _Pending) -> ModulePruned:
        ev = _finish_module(p, self.bi, self.block_sparsity, self.module_info, self.notes, self.previews)
        self.zeros += p.zeros
        self.numel += p.numel
        return ev

    def settle(self, stats: dict[str, InputStats]) -> Generator[Event, None, None]:
        """Read the deferred numbers back (one synchronisation) and yield their events."""
        if not self.pending:
            return
        _settle(self.pending, self.block, stats, self.s, self.cfg, self.m, self.seqlen)
        for p in self.pending:
            yield self._finish(p)
        self.pending.clear()

    def one_pass(self, inputs: BlockInputs, names: tuple[str, ...], needs: StatsNeeds, device: torch.device,
                 should_stop: Callable[[], bool], first: bool) -> Generator[Event, None, list[torch.Tensor]]:
        """Statistics, pruning and outputs in one pass (see ``core/prune/lockstep.py``); returns the outputs.

        ``first``: the first block pruned this way keeps its original weights until the pass is
        over, so a model whose modules cannot be pruned in one pass (a module that runs twice) is
        found there and the block redone in two passes; the other blocks share its structure.
        """
        from .lockstep import LockstepBlock, NotLockstepable

        lock = LockstepBlock(self.block, inputs, names, needs, device)
        try:
            left = set(names)
            for name in lock.modules():
                if should_stop():
                    raise Cancelled()
                yield from self.prune(name, lock.stats[name], keep_original=first)
                left.discard(name)
                if not left:
                    self.shared.clear()  # before the batches finish the block
        except NotLockstepable as e:
            if not first:
                raise PruneStudioError(
                    f"Block {self.bi} cannot be pruned in one pass although the first block could.",
                    hint="Turn one-pass pruning off (--two-pass) for this model.", details=str(e)) from e
            raise RedoBlock(str(e), two_pass=True) from e
        finally:
            lock.close()
        if self.pending:
            # SparseGPT on an accelerator without host synchronisation: a Hessian that needed more
            # damping is only known now, after later modules already read that module's output.
            flat = torch.stack([p.outcome.ok if p.outcome.ok is not None else
                                torch.ones((), dtype=torch.bool, device=p.outcome.mask.device)
                                for p in self.pending]).tolist()
            if not all(flat):
                raise RedoBlock("A Hessian was not positive definite at the configured damping.",
                                 two_pass=False)
            yield from self.settle(lock.stats)
        outputs = [o for o in lock.outputs if o is not None]
        if len(outputs) != len(lock.outputs):
            raise PruneStudioError(f"Block {self.bi} produced no output for a calibration batch.")
        self.originals.clear()
        return outputs

    def restore(self) -> None:
        """Put back the weights of the modules pruned so far (before redoing the block)."""
        for name, w in self.originals.items():
            architecture.set_weight_2d(self.block.get_submodule(name), w)
        self.originals.clear()
        self.pending.clear()
