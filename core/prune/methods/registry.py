"""The pruning methods by name: one :class:`Method` says all the program needs to know of a method.

The settings (``core/config.py``) accept the registered names and derive from them whether a run
needs calibration data, its default pass order and its label; the pipeline gathers the statistics
a method declares and calls its prune function; the memory estimate counts its statistics and
Hessian work; the CLI's ``--method`` and the GUI's method list offer every registered method.
Adding a method is writing its prune function (see :mod:`.interface`) and registering it::

    register(Method("toy", "Toy", "Removes the largest weights.", prune=toy_prune))

A method may *refine* the mask of another one (DSnoT): ``refines`` names the setting that says
which registered method gives the initial mask (``"dsnot_init"``). The statistics, the Hessian
work and (by default) the pass order of a run are then those of both methods together, and the
refining method's prune function receives the other method's outcome as ``ctx.initial``.

The built-in methods are registered in :mod:`.builtin`. Nothing here imports torch or the
settings at run time, so ``core/config.py`` can validate method names cheaply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from dataclasses import replace as _replace
from typing import TYPE_CHECKING

from ...errors import ConfigError
from ..needs import StatsNeeds
from .interface import ModuleContext, ModuleOutcome, PruneFn, SharedInputCache

if TYPE_CHECKING:
    import torch

    from ...config import PruneConfig
    from ..stats import InputStats

__all__ = ["Method", "register", "unregister", "get", "names", "methods", "refined", "check",
           "stats_needs", "builds_hessian", "default_one_pass", "defers_sync", "settings_used",
           "run_label", "prune_module"]

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True)
class Method:
    """One pruning method, as registered under :attr:`name`."""

    name: str
    """The value of ``PruneConfig.method`` (lower case letters, digits, ``-`` and ``_``)."""
    label: str
    """The name people read (``SparseGPT``)."""
    description: str
    """One sentence on what the method does, for the GUI and the CLI's help."""
    prune: PruneFn
    """``prune(weight, stats, sparsity, n, m, ctx) -> ModuleOutcome`` for one module."""
    needs: StatsNeeds | None = None
    """What the hooks gather about each module's input; None: no calibration data at all."""
    hessian: bool = False
    """Whether pruning works with the inverse of each input's Hessian (gathered, so ``needs``
    must ask for it, then damped and factorised: three more ``in x in`` matrices while pruning)."""
    one_pass: bool | None = False
    """Default pass order (``PruneConfig.one_pass`` overrides it): True, one forward pass per
    block with every module pruned as soon as all batches reached it; False, the reference's two
    passes (statistics of the dense block, then its pruned outputs). None, refinements only: the
    order of the method whose mask is refined."""
    defers_sync: bool = False
    """Whether ``prune`` honours ``ctx.sync=False`` (no host synchronisation; the outcome's ``ok``
    says whether it stands). The pipeline asks it on accelerators and redoes what is not ok."""
    refines: str | None = None
    """The ``PruneConfig`` field naming the registered method whose mask this one refines (that
    method must refine none itself); None: the method prunes from the dense weights."""
    settings: tuple[str, ...] = ()
    """The ``PruneConfig`` fields the method reads (``refines`` counts without being listed)."""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"A method's name must be lower-case letters, digits, '-' or '_', got {self.name!r}.")
        if not callable(self.prune):
            raise ValueError(f"Method {self.name}: prune must be a function.")
        if self.hessian and not (self.needs is not None and self.needs.hessian):
            raise ValueError(f"Method {self.name} works with a Hessian, so its needs must gather one.")
        if self.one_pass is None and self.refines is None:
            raise ValueError(f"Method {self.name}: only a method that refines another may take its pass order.")
        object.__setattr__(self, "settings", tuple(self.settings))


_METHODS: dict[str, Method] = {}


def register(method: Method, *, replace: bool = False) -> Method:
    """Make ``method`` available under its name; ``replace=True`` lets it take a name already used."""
    if method.name in _METHODS and not replace:
        raise ValueError(f"A pruning method named '{method.name}' is already registered.")
    _METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (a test's toy method, say); no error when none has that name."""
    _METHODS.pop(name, None)


def names(refining: bool | None = None) -> tuple[str, ...]:
    """Registered names in registration order; ``refining=False``: only the methods that prune
    from the dense weights (those that can give another's initial mask), True: only refinements."""
    return tuple(m.name for m in _METHODS.values() if refining is None or (m.refines is not None) == refining)


def methods() -> tuple[Method, ...]:
    return tuple(_METHODS.values())


def get(name: str) -> Method:
    """The method registered as ``name``; :class:`ConfigError` naming the choices otherwise."""
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"Unknown pruning method '{name}' (choose from {', '.join(names())}).") from None


# ---- a configuration's methods -----------------------------------------------------------------

def _initial_choice(method: Method, cfg: PruneConfig) -> str:
    if not hasattr(cfg, str(method.refines)):
        raise ValueError(f"Method {method.name} refines the method named by '{method.refines}', "
                         "which is not a pruning setting.")
    return getattr(cfg, str(method.refines))


def check(cfg: PruneConfig) -> None:
    """Raise :class:`ConfigError` unless ``cfg.method`` is registered and every refinement's setting
    names a method it can refine (checked for every refinement, chosen or not, as every setting is)."""
    get(cfg.method)
    initial = names(refining=False)
    for method in _METHODS.values():
        if method.refines is not None and _initial_choice(method, cfg) not in initial:
            raise ConfigError(f"{method.label}'s initial mask must come from {', '.join(initial)}, "
                              f"got '{_initial_choice(method, cfg)}'.")


def refined(cfg: PruneConfig) -> Method | None:
    """The method whose mask ``cfg.method`` refines (DSnoT's ``dsnot_init``), or None."""
    method = get(cfg.method)
    return get(_initial_choice(method, cfg)) if method.refines is not None else None


def _chain(cfg: PruneConfig) -> tuple[Method, ...]:
    base = refined(cfg)
    return (get(cfg.method),) if base is None else (get(cfg.method), base)


def stats_needs(cfg: PruneConfig) -> StatsNeeds | None:
    """What the hooks must gather for ``cfg``'s method (None: no calibration forward pass at all;
    OWL's own needs are the pipeline's business)."""
    needs: StatsNeeds | None = None
    for method in _chain(cfg):
        if method.needs is not None:
            needs = method.needs if needs is None else needs | method.needs
    return needs


def builds_hessian(cfg: PruneConfig) -> bool:
    """Whether pruning with ``cfg`` damps and factorises a Hessian per module input."""
    return any(method.hessian for method in _chain(cfg))


def default_one_pass(cfg: PruneConfig) -> bool:
    """The pass order of ``cfg``'s method(s) when ``cfg.one_pass`` does not choose."""
    for method in _chain(cfg):
        if method.one_pass is not None:
            return method.one_pass
    return False


def defers_sync(cfg: PruneConfig) -> bool:
    """Whether the pipeline may prune ``cfg``'s modules without host synchronisation."""
    return get(cfg.method).defers_sync


def settings_used(cfg: PruneConfig) -> frozenset[str]:
    """The ``PruneConfig`` fields that ``cfg``'s method(s) read."""
    used: set[str] = set()
    for method in _chain(cfg):
        used.update(method.settings)
        if method.refines is not None:
            used.add(method.refines)
    return frozenset(used)


def run_label(cfg: PruneConfig) -> str:
    """``wanda``, or for a refinement the refined method in brackets: ``dsnot[sparsegpt]``."""
    base = refined(cfg)
    return cfg.method if base is None else f"{cfg.method}[{base.name}]"


def prune_module(weight: torch.Tensor, stats: InputStats | None, sparsity: float,
                 cfg: PruneConfig, n: int = 0, m: int = 0, seqlen: int = 1,
                 name: str = "", sync: bool = True, shared: SharedInputCache | None = None) -> ModuleOutcome:
    """Prune one ``[out, in]`` float32 weight to ``sparsity`` (or N:M) with ``cfg.method``: the one
    place the pipeline calls a method.

    ``seqlen`` and ``name`` reach the method through its :class:`ModuleContext`. ``sync=False`` is
    passed on only to a method that ``defers_sync``; the outcome's ``ok`` must then be checked and
    the module redone with ``sync=True`` when it is False. ``shared``: the block's
    :class:`SharedInputCache`, so modules reading the same input share derived values. For a
    refinement, the refined method runs first (synchronously) and its outcome is ``ctx.initial``.
    """
    method = get(cfg.method)
    ctx = ModuleContext(cfg, name=name, seqlen=seqlen, sync=sync or not method.defers_sync, shared=shared)
    base = refined(cfg)
    if base is not None:
        initial = base.prune(weight, stats, sparsity, n, m, _replace(ctx, sync=True))
        ctx = _replace(ctx, initial=initial)
    return method.prune(weight, stats, sparsity, n, m, ctx)
