"""What a method's prune function is given and what it gives back, for one linear module.

A prune function (see :class:`~.registry.Method`) is called as
``prune(weight, stats, sparsity, n, m, ctx)`` with the module's ``[out, in]`` float32 weight, its
:class:`~..stats.InputStats` (None when the method needs no statistics), the target sparsity,
the N:M pattern (``0, 0`` when unstructured) and a :class:`ModuleContext`; it returns a
:class:`ModuleOutcome`. Nothing here imports torch, so the registry stays cheap to import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

    from ...config import PruneConfig
    from ..stats import InputStats


@dataclass
class ModuleOutcome:
    """One pruned module."""

    weight: torch.Tensor | None
    """New ``[out, in]`` weight with zeros where pruned; None: the weights are unchanged apart
    from the mask (magnitude, Wanda), which the caller applies in place without a copy."""
    mask: torch.Tensor
    """bool ``[out, in]``, True = removed."""
    info: dict[str, Any] = field(default_factory=dict)
    """Method-specific numbers for the report (SparseGPT's damping and error, DSnoT's swaps)."""
    ok: torch.Tensor | None = None
    """``sync=False`` only: a 0-dim bool tensor, False when the result must be recomputed with
    ``sync=True``."""


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


@dataclass(frozen=True)
class ModuleContext:
    """Everything about the call besides the weight, its statistics and the target."""

    settings: PruneConfig
    """The run's settings; a method reads its own fields (``sparsegpt_damp``, ``dsnot_skip``...)."""
    name: str = ""
    """The module's name inside its block (``self_attn.q_proj``), for messages and roles."""
    seqlen: int = 1
    """Tokens per calibration sample (DSnoT converts its threshold with it)."""
    sync: bool = True
    """False: the method may avoid host synchronisation (only asked of a method that declares
    ``defers_sync``); the outcome's ``ok`` must then say whether it stands."""
    shared: SharedInputCache | None = None
    """The block's cache for values shared by modules that read one input."""
    initial: ModuleOutcome | None = None
    """For a method that refines another's mask: the other method's outcome for this module."""


PruneFn = Callable[["torch.Tensor", "InputStats | None", float, int, int, ModuleContext], ModuleOutcome]
"""``prune(weight, stats, sparsity, n, m, ctx) -> ModuleOutcome``."""
