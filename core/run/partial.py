"""The coverage guarantee of a run: what it prunes of the decoder blocks, and the refusal of a run
that would silently leave dense weights a method normally prunes (today: the fused experts of
mixture-of-experts models), unless the settings allow a partial run (``PruneConfig.allow_partial``,
CLI ``--allow-partial``, a confirmation in the app)."""

from __future__ import annotations

from torch import nn

from ..config import PruneConfig
from ..errors import ConfigError
from ..model import architecture
from ..model.coverage import Coverage, block_coverage

ALLOW_HINT = "Pass --allow-partial to prune the rest."


def run_coverage(model: nn.Module, prune: PruneConfig) -> Coverage:
    """What a run with ``prune``'s settings prunes of ``model``'s blocks (only shapes are read)."""
    lay = architecture.layout(model, prune.skip_modules)
    return block_coverage(model, lay, prune.skip_modules)


def check_coverage(model: nn.Module, prune: PruneConfig) -> Coverage:
    """Refuse, with one sentence, a run that would leave dense block weights a method would prune
    if it could, unless ``prune.allow_partial``; returns the coverage otherwise."""
    cov = run_coverage(model, prune)
    if cov.partial and not prune.allow_partial:
        raise ConfigError(cov.refusal(), hint=ALLOW_HINT)
    return cov
