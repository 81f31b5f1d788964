"""Settings that are possible in general but impossible for one model, checked before any long step."""

from __future__ import annotations

from ..config import Recipe
from ..errors import ConfigError
from ..model import architecture
from ..model.loading import LoadedModel
from .partial import check_coverage


def check_seqlen(loaded: LoadedModel, seqlen: int, what: str = "calibration") -> None:
    """Refuse a sequence length beyond the model's context window (``max_position_embeddings``)."""
    ctx = loaded.info.get("max_context")
    if ctx and seqlen > ctx:
        raise ConfigError(
            f"The {what} sequence length {seqlen} is longer than the {ctx} tokens {loaded.name} can "
            f"read at once (its max_position_embeddings); use {ctx} or less."
        )


def validate_recipe(loaded: LoadedModel, recipe: Recipe) -> None:
    """Refuse a recipe this model cannot run: sequence lengths beyond its context, block weights a
    method would prune but this version cannot (fused experts: a partial run, unless the settings
    allow one; ``partial.py``), a per-block sparsity list of the wrong length, an N:M structure
    whose M does not divide a module's input."""
    cal, prune = recipe.calibration, recipe.prune
    if prune.needs_calibration:
        check_seqlen(loaded, cal.seqlen, "calibration")
    if recipe.eval_ppl:
        check_seqlen(loaded, recipe.eval_seqlen or cal.seqlen, "evaluation")
    check_coverage(loaded.model, prune)  # weights no method here can prune: refused unless allow_partial
    lay = architecture.layout(loaded.model, prune.skip_modules)
    if prune.block_sparsity is not None and len(prune.block_sparsity) != len(lay.blocks):
        raise ConfigError(f"{len(prune.block_sparsity)} per-block sparsities given, "
                          f"{loaded.name} has {len(lay.blocks)} blocks.")
    n, m = prune.nm
    if n and m:
        widths: dict[str, int] = {}  # every block's modules: hybrid blocks differ
        for bi, block in enumerate(lay.blocks):
            for name in lay.names_of(bi):
                width = architecture.weight_shape(block, name)[1]
                if width % m and name not in widths:
                    widths[name] = width
        bad = [f"{name} ({width})" for name, width in widths.items()]
        if bad:
            raise ConfigError(
                f"N:M structure {n}:{m} needs the input size of every pruned module to be a multiple "
                f"of {m}; not so for {', '.join(bad)}.",
                hint="Choose another M, or leave those modules dense (CLI: --skip NAME).",
            )
