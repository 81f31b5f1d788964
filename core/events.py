"""Typed progress events that long-running engine operations yield.

The pipeline and the other long operations are plain generators of these events (and return
their result through ``StopIteration.value``). The CLI turns them into a progress bar, the GUI
into Qt signals; neither the events nor their producers know about either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generator, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Event:
    """Base class of every event."""


@dataclass(frozen=True)
class Message(Event):
    """A line for the log pane / stderr."""

    text: str
    level: str = "info"  # "info" | "warning"


@dataclass(frozen=True)
class PhaseStarted(Event):
    """A named phase begins (``load``, ``calibrate``, ``capture``, ``prune``, ``evaluate``, ``export``)."""

    phase: str
    total: int = 0  # number of steps in the phase, 0 when unknown


@dataclass(frozen=True)
class PhaseProgress(Event):
    """``done`` of ``total`` steps of a phase (both known: an ETA can be shown from the rate)."""

    phase: str
    done: int
    total: int
    detail: str = ""
    # how far the phase is (0..1) when it is finer than done/total (a self-generated batch's tokens
    # between its samples); None: done/total says it
    fraction: float | None = None

    @property
    def share(self) -> float:
        """How far the phase is, 0..1: :attr:`fraction`, or ``done / total`` (0 when unknown)."""
        if self.fraction is not None:
            return min(max(self.fraction, 0.0), 1.0)
        return min(self.done / self.total, 1.0) if self.total > 0 else 0.0


@dataclass(frozen=True)
class PhaseDone(Event):
    phase: str
    seconds: float


@dataclass(frozen=True)
class RunStarted(Event):
    """The shape of the pruning work: blocks and the prunable modules in each."""

    method: str
    num_blocks: int
    module_names: tuple[str, ...]  # relative names inside a block, e.g. "self_attn.q_proj" (union of all blocks)
    block_sparsity: tuple[float, ...]  # target sparsity per block (OWL makes them differ)
    nsamples: int
    seqlen: int
    device: str
    # each block's own prunable modules (hybrid blocks differ; a name missing is a module the block
    # lacks); empty when not given, then every block has ``module_names``
    block_module_names: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class AllocationComputed(Event):
    """OWL's per-block allocation (outlier ratio and the sparsity each block gets)."""

    outlier_ratios: tuple[float, ...]
    block_sparsity: tuple[float, ...]
    block_n: tuple[int, ...] = ()  # with N:M: the per-block N


@dataclass(frozen=True)
class BlockStarted(Event):
    index: int
    num_blocks: int
    target_sparsity: float


@dataclass(frozen=True)
class ModulePruned(Event):
    block: int
    name: str  # relative name inside the block
    sparsity: float  # achieved fraction of zeros
    seconds: float
    shape: tuple[int, int] = (0, 0)  # (out_features, in_features)
    info: dict[str, Any] = field(default_factory=dict)  # method extras (damping, swaps, error)


@dataclass(frozen=True)
class BlockDone(Event):
    index: int
    sparsity: float  # achieved, over the block's pruned modules
    seconds: float
    module_sparsity: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RunFinished(Event):
    global_sparsity: float
    seconds: float


def run_to_completion(gen: Generator[Any, None, T], on_event: Callable[[Any], None] | None = None) -> T:
    """Drain a generator of events (or of any progress items), optionally forwarding each one;
    return its result."""
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(ev)
