"""Dense against pruned: the same prompts continued by both models with the same settings and seed.

:func:`iter_compare` writes the pruned model's continuations with the model in memory and the
dense model's with a dense model given, or, once the model in memory is pruned, with a second
copy of the original weights loaded for it and let go (as the dense perplexity after a run does,
:func:`~.evaluation.iter_dense_baseline`): that costs the model's memory a second time and a load
while it writes. Dense continuations known from before (``known_dense``: greedy or seeded decoding
of the same weights gives the same text) are not written again, so the second copy is loaded only
for prompts the dense model has not continued yet. :func:`samples_report` is what a report and the
model card keep of a comparison.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Callable, Generator, Mapping, Sequence

from ..errors import ConfigError
from ..evaluate.samples import SampleSettings, SampleWritten, iter_continue
from ..events import Event, Message
from ..model.devices import empty_cache
from ..model.loading import LoadedModel
from .load import LoadArgs, iter_load, place_model

StopFn = Callable[[], bool]


def _never() -> bool:
    return False


@dataclass(frozen=True)
class SamplePair:
    """One prompt and the new text of each model (None: that model did not write one)."""

    prompt: str
    dense: str | None
    pruned: str | None


@dataclass(frozen=True)
class SampleComparison:
    """Prompts continued by the dense and the pruned model with ``settings``; ``dense_from`` says
    where the dense text came from ("model": a dense model in memory, "copy": a second copy of the
    original weights, "known": written before, "": no dense text)."""

    settings: SampleSettings
    pairs: tuple[SamplePair, ...]
    dense_from: str = ""


def iter_compare(prompts: Sequence[str], settings: SampleSettings, pruned: LoadedModel | None = None,
                 dense: LoadedModel | LoadArgs | None = None, known_dense: Mapping[str, str] | None = None,
                 should_stop: StopFn = _never) -> Generator[Event, None, SampleComparison]:
    """Continue each of ``prompts`` with the ``pruned`` model (None: none) and the dense one:
    ``dense`` a dense model in memory, or the :class:`LoadArgs` of the original model to load a
    second copy from (only when some prompt's dense text is not in ``known_dense``), or None (no
    dense text). Yields the continuations' events (:class:`~..evaluate.samples.SampleWritten` with
    ``which`` "dense" / "pruned"); cancellable between tokens."""
    prompts = list(prompts)
    if not prompts:
        raise ConfigError("Write a prompt for the models to continue.")
    if pruned is None and dense is None:
        raise ConfigError("There is no model to continue the prompt with; load one in step 1.")
    known = dict(known_dense or {})
    texts: dict[str, dict[str, str]] = {"dense": {}, "pruned": {}}
    if pruned is not None:
        place_model(pruned)
        for p in prompts:
            w = yield from iter_continue(pruned.model, pruned.tokenizer, p, settings, "pruned", should_stop)
            texts["pruned"][p] = w.text
    dense_from = ""
    missing = [p for p in prompts if p not in known]
    for p in prompts:
        if p in known:
            texts["dense"][p] = known[p]
            yield SampleWritten("dense", p, known[p], 0, False)
            dense_from = "known"
    if missing and isinstance(dense, LoadedModel):
        place_model(dense)
        for p in missing:
            texts["dense"][p] = (yield from iter_continue(dense.model, dense.tokenizer, p, settings, "dense",
                                                          should_stop)).text
        dense_from = "model"
    elif missing and isinstance(dense, LoadArgs):
        yield from _iter_with_copy(dense, missing, settings, pruned, texts["dense"], should_stop)
        dense_from = "copy"
    pairs = tuple(SamplePair(p, texts["dense"].get(p), texts["pruned"].get(p)) for p in prompts)
    return SampleComparison(settings, pairs, dense_from)


def _iter_with_copy(args: LoadArgs, prompts: list[str], settings: SampleSettings, pruned: LoadedModel | None,
                    out: dict[str, str], should_stop: StopFn) -> Generator[Event, None, None]:
    """Load a second copy of the original model from ``args``, continue ``prompts`` with it into
    ``out``, and let it go (also on a cancel or an error)."""
    if pruned is not None:
        from ..model.memory import format_bytes

        size = sum(p.numel() * p.element_size() for p in pruned.model.parameters())
        yield Message(f"Loading a second copy of the original model for its text: about {format_bytes(size)} "
                      "more memory while it writes; the pruned model stays as it is.")
    copy = yield from iter_load(args, should_stop)
    try:
        place_model(copy)
        for p in prompts:
            out[p] = (yield from iter_continue(copy.model, copy.tokenizer, p, settings, "dense", should_stop)).text
    finally:
        device = copy.device
        copy.model = None  # the copy goes now, not when the caller lets it go
        del copy
        gc.collect()
        empty_cache(device)


def samples_report(comparison: SampleComparison) -> dict[str, Any] | None:
    """What a report keeps of ``comparison``: the settings and each prompt with both texts; None
    when no prompt has both (nothing to compare)."""
    pairs = [{"prompt": p.prompt, "dense": p.dense, "pruned": p.pruned}
             for p in comparison.pairs if p.dense is not None and p.pruned is not None]
    if not pairs:
        return None
    return {"settings": comparison.settings.as_dict(), "decoding": comparison.settings.describe(), "pairs": pairs}
