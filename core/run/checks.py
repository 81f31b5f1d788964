"""Settings that are possible in general but impossible for one model, checked before any long step."""

from __future__ import annotations

from ..config import Recipe
from ..errors import ConfigError
from ..model import architecture
from ..model.loading import LoadedModel


def check_seqlen(loaded: LoadedModel, seqlen: int, what: str = "calibration") -> None:
    """Refuse a sequence length beyond the model's context window (``max_position_embeddings``)."""
    ctx = loaded.info.get("max_context")
    if ctx and seqlen > ctx:
        raise ConfigError(
            f"The {what} sequence length {seqlen} is longer than the {ctx} tokens {loaded.name} can "
            f"read at once (its max_position_embeddings); use {ctx} or less."
        )


def validate_recipe(loaded: LoadedModel, recipe: Recipe) -> None:
    """Refuse a recipe this model cannot run: sequence lengths beyond its context, a per-block
    sparsity list of the wrong length, an N:M structure whose M does not divide a module's input."""
    cal, prune = recipe.calibration, recipe.prune
    if prune.needs_calibration:
        check_seqlen(loaded, cal.seqlen, "calibration")
    if recipe.eval_ppl:
        check_seqlen(loaded, recipe.eval_seqlen or cal.seqlen, "evaluation")
    lay = architecture.layout(loaded.model, prune.skip_modules)
    if prune.block_sparsity is not None and len(prune.block_sparsity) != len(lay.blocks):
        raise ConfigError(f"{len(prune.block_sparsity)} per-block sparsities given, "
                          f"{loaded.name} has {len(lay.blocks)} blocks.")
    n, m = prune.nm
    if n and m:
        bad = [f"{name} ({architecture.in_features(lay.blocks[0].get_submodule(name))})"
               for name in lay.module_names
               if architecture.in_features(lay.blocks[0].get_submodule(name)) % m]
        if bad:
            raise ConfigError(
                f"N:M structure {n}:{m} needs the input size of every pruned module to be a multiple "
                f"of {m}; not so for {', '.join(bad)}.",
                hint="Choose another M, or leave those modules dense (CLI: --skip NAME).",
            )
