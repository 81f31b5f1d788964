"""Pruning methods: pure functions on one weight matrix and its input statistics, by name.

:mod:`.registry` holds one :class:`Method` per method (what it needs, its pass order, its prune
function) and :func:`prune_module`, the single dispatch point the pipeline calls for every linear
module; :mod:`.builtin` registers magnitude, Wanda, SparseGPT and DSnoT (importing this package
registers them). The implementations live in :mod:`.basic`, :mod:`.sparsegpt` and :mod:`.dsnot`;
:mod:`.masks` turns scores into masks and :mod:`.owl` allocates sparsity per block. Importing the
package does not import torch.
"""

from __future__ import annotations

from . import builtin as _builtin  # noqa: F401 - registers the built-in methods
from .interface import ModuleContext, ModuleOutcome, PruneFn, SharedInputCache
from .registry import Method, get, names, prune_module, register, stats_needs, unregister

__all__ = ["Method", "ModuleContext", "ModuleOutcome", "PruneFn", "SharedInputCache", "get", "names",
           "prune_module", "register", "stats_needs", "unregister"]
