"""One forward pass per block: statistics, pruning and the next block's inputs together.

The reference implementations of Wanda and SparseGPT run every calibration batch through a block
twice: once with the dense block to gather each module's input statistics, then again with the
pruned block to produce the next block's inputs. Here a block runs once. Every calibration batch
goes through the block in a thread of its own, and the batches take turns: a forward pre-hook on
each prunable module records the batch's input and hands the turn to the next batch; once every
batch has recorded its input to a module, the module's statistics are complete, the caller prunes
it, and the batches go on, through the *pruned* module, to the next hook. When the last module is
done the batches finish the block, and their outputs are the pruned block's outputs, which is what
the next block needs.

So each module's statistics come from inputs that already went through the pruned modules before
it in the same block (q/k/v before o_proj, gate/up before down_proj): the "true sequential" order
of SparseGPT's reference (``--true-sequential`` in IST-DASLab/sparsegpt), which the two-pass
Wanda reference does not use. Only one thread computes at a time, so the batches never compete
for the cores; what the pass costs in memory is every batch's activations at the hook it waits
at, about one batch's worth per batch (for the statistics pass it is one batch at a time).

Modules that read the very same input tensor (q/k/v, gate/up) share one :class:`InputStats`,
recorded once, as in the two-pass pipeline. A module that runs more than once per forward pass
cannot be pruned before its later calls have been seen; :class:`LockstepBlock` raises
:class:`NotLockstepable` for it and the pipeline falls back to the two-pass order for the model.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import PruneStudioError
from .capture import BlockInputs, run_block
from .needs import StatsNeeds
from .stats import InputStats

__all__ = ["LockstepBlock", "NotLockstepable"]

_MAIN = -1


class NotLockstepable(PruneStudioError):
    """The block cannot be pruned in one pass (a module runs more than once, or batches diverge)."""


class _Abort(BaseException):
    """Raised inside a batch thread to unwind its forward pass when the pass is abandoned."""


class LockstepBlock:
    """Runs ``inputs``' batches through ``block`` in turn, stopping at every prunable module.

    Iterate :meth:`modules`: it yields a module's name when every batch has recorded its input to
    it (``stats[name]`` is then complete) and resumes the batches when the caller asks for the
    next name, so the caller prunes the module in between. Afterwards :attr:`outputs` holds the
    block's output for every batch. :meth:`close` (also on ``with``) abandons a pass in progress.
    """

    def __init__(self, block: nn.Module, inputs: BlockInputs, names: tuple[str, ...] | list[str],
                 needs: StatsNeeds, device: torch.device) -> None:
        self.block, self.inputs, self.needs, self.device = block, inputs, needs, device
        self.names = tuple(names)
        self.stats: dict[str, InputStats] = {}
        self.outputs: list[torch.Tensor | None] = [None] * len(inputs.hidden)
        self._n = len(inputs.hidden)
        self._cond = threading.Condition()
        self._turn = _MAIN
        self._abort = False
        self._at: list[str | None] = [None] * self._n  # hook each batch waits at (None: finished)
        self._error: BaseException | None = None
        self._done_modules: set[str] = set()
        self._leader: dict[str, str] = {}  # module -> module whose input (and statistics) it shares
        self._seen: list[dict[str, tuple[int, tuple[int, ...]]]] = [{} for _ in range(self._n)]
        # the first batch's module inputs stay referenced until the pass ends, so a freed tensor's
        # memory reused by a later module's input is never taken for a shared input
        self._keep: list[torch.Tensor] = []
        self._threads: list[threading.Thread] = []
        self._handles: list[Any] = []
        self._started = False

    # -- the batch threads ------------------------------------------------------------------------
    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> None:
            t = self._local.index
            x = args[0] if args else next(iter((kwargs or {}).values()))
            if name in self._done_modules:
                raise NotLockstepable(
                    f"Module {name} runs more than once per forward pass; it is pruned with the "
                    "two-pass order instead.")
            key = (x.untyped_storage().data_ptr() + x.storage_offset() * x.element_size(), tuple(x.shape))
            seen = self._seen[t]
            leader = self._leader.get(name)
            if t == 0 and leader is None:
                leader = next((n for n, k in seen.items() if k == key), name)
                self._leader[name] = leader
                if leader == name:
                    self.stats[name] = InputStats(x.shape[-1], self.needs, self.device)
                else:
                    self.stats[name] = self.stats[leader]
            seen[name] = key
            if t == 0:
                self._keep.append(x)
            if leader == name:
                self.stats[name].add(x)
            elif seen.get(leader) != key:
                raise NotLockstepable(f"Modules {leader} and {name} share their input in one batch "
                                      "but not in another.")
            self._yield_turn(t, name)
            return None

        return hook

    def _yield_turn(self, t: int, at: str | None) -> None:
        """Batch ``t`` stops (at hook ``at``, or finished when None) and passes the turn on."""
        with self._cond:
            self._at[t] = at
            self._turn = t + 1 if t + 1 < self._n else _MAIN
            self._cond.notify_all()
            if at is None:
                return
            while self._turn != t and not self._abort:
                self._cond.wait()
            if self._abort:
                raise _Abort

    def _run(self, t: int) -> None:
        self._local.index = t
        with self._cond:
            while self._turn != t and not self._abort:
                self._cond.wait()
            if self._abort:
                return
        try:
            with torch.no_grad():
                self.outputs[t] = run_block(self.block, self.inputs, t)
        except _Abort:
            return
        except BaseException as e:  # handed to the caller's thread, raised there
            with self._cond:
                if self._error is None:
                    self._error = e
                self._abort = True
                self._turn = _MAIN
                self._cond.notify_all()
            return
        self._yield_turn(t, None)

    # -- the caller's side ------------------------------------------------------------------------
    def _wait_main(self) -> None:
        with self._cond:
            while self._turn != _MAIN:
                self._cond.wait()
            if self._error is not None:
                err, self._error = self._error, None
                raise err

    def _release(self) -> None:
        with self._cond:
            self._turn = 0
            self._cond.notify_all()

    def modules(self) -> Iterator[str]:
        """Yield each module's name once its statistics are complete; prune it before resuming."""
        if self._started:
            raise RuntimeError("a LockstepBlock runs once")
        self._started = True
        self._local = threading.local()
        for name in self.names:
            mod = self.block.get_submodule(name)
            self._handles.append(mod.register_forward_pre_hook(self._hook(name)))
        for t in range(self._n):
            th = threading.Thread(target=self._run, args=(t,), name=f"prunestudio-batch-{t}", daemon=True)
            self._threads.append(th)
            th.start()
        try:
            self._release()
            while True:
                self._wait_main()
                at = set(self._at)
                if at == {None}:
                    break
                if len(at) != 1:
                    raise NotLockstepable("The calibration batches took different paths through the block.")
                name = next(iter(at))
                assert name is not None
                yield name
                self._done_modules.add(name)
                self._release()
            missing = [n for n in self.names if n not in self._done_modules]
            if missing:
                raise PruneStudioError(f"Module {missing[0]} received no input during calibration.")
        finally:
            self.close()

    def close(self) -> None:
        """Stop the batch threads (a pass in progress is abandoned) and remove the hooks."""
        with self._cond:
            self._abort = True
            self._cond.notify_all()
        for th in self._threads:
            th.join()
        self._threads = []
        for h in self._handles:
            h.remove()
        self._handles = []
        self._keep = []

    def __enter__(self) -> "LockstepBlock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
