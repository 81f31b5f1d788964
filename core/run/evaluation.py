"""Measuring a loaded model's perplexity the way a run does: the settings, the measurement, and
what it was measured on (:class:`PerplexityMeasured`: the text, the window length, the windows read)."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator

from ..config import Recipe
from ..errors import ConfigError
from ..evaluate.perplexity import eval_ids, iter_perplexity
from ..events import Event, Message
from ..model.devices import empty_cache
from ..model.loading import LoadedModel
from .checks import check_seqlen
from .load import LoadArgs, iter_load, place_model

StopFn = Callable[[], bool]


def _never() -> bool:
    return False


@dataclass(frozen=True)
class EvalSettings:
    """The text a perplexity is measured on, the window length and the most windows read."""

    source: str
    seqlen: int = 512
    max_windows: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError("Choose an evaluation text: wikitext2, c4, a file or hf:NAME.")
        if isinstance(self.seqlen, bool) or not isinstance(self.seqlen, int) or self.seqlen < 2:
            raise ConfigError("The evaluation sequence length must be a whole number of at least 2, "
                              f"got {self.seqlen!r}.")
        if self.max_windows is not None and (isinstance(self.max_windows, bool) or not isinstance(self.max_windows, int)
                                             or self.max_windows < 1):
            raise ConfigError(f"The evaluation window limit must be at least 1 (or none), got {self.max_windows!r}.")

    @classmethod
    def of_recipe(cls, recipe: Recipe) -> "EvalSettings | None":
        """What a recipe evaluates: its first perplexity set (a run measures one), with its window
        length (the calibration's when it names none) and limit; None when it names no set."""
        if not recipe.eval_ppl:
            return None
        return cls(recipe.eval_ppl[0], recipe.eval_seqlen or recipe.calibration.seqlen, recipe.eval_max_windows)

    def cache_key(self, args: LoadArgs) -> tuple[Any, ...]:
        """Key of a perplexity measured with these settings on the model ``args`` loads."""
        return (args.spec, args.device, args.dtype, self.source, self.seqlen, self.max_windows)


@dataclass(frozen=True)
class PerplexityMeasured(Event):
    """A perplexity and what it was measured on: the text as the user named it (``source``), the
    window length, the window limit asked for and the number of windows actually evaluated (the
    text may hold fewer than the limit; a suite such as C4 keeps at most its own number)."""

    phase: str
    source: str
    seqlen: int
    max_windows: int | None
    windows: int
    ppl: float


def count_windows(n_tokens: int, seqlen: int, max_windows: int | None) -> int:
    """How many ``seqlen`` windows a perplexity reads from ``n_tokens`` tokens with the limit
    ``max_windows`` (None: no limit); the rule of :func:`~prunestudio.core.evaluate.perplexity.iter_perplexity`."""
    n = n_tokens // seqlen
    return min(n, max_windows) if max_windows else n


def iter_ppl_measured(loaded: LoadedModel, source: str, seqlen: int, should_stop: StopFn = _never,
                      phase: str = "perplexity", max_windows: int | None = None,
                      batch_size: int = 4, data_dir: str | Path | None = None,
                      cache: bool = False) -> Generator[Event, None, PerplexityMeasured]:
    """Perplexity of ``loaded`` on ``source`` with what it was measured on; the result is also
    yielded last, so whoever only listens to the events learns it too. ``cache``: look the result
    up in, and add it to, the dense-perplexity cache (``core/evaluate/ppl_cache.py``), keyed by the
    weights themselves."""
    check_seqlen(loaded, seqlen, "evaluation")
    place_model(loaded)
    ids = eval_ids(loaded.tokenizer, source, seqlen, data_dir)
    key = None
    ppl: float | None = None
    if cache:
        from ..evaluate import ppl_cache

        key = ppl_cache.dense_key(loaded.model, ids, seqlen, max_windows, batch_size, loaded.device)
        ppl = ppl_cache.lookup(key)
        if ppl is not None:
            yield Message(f"Perplexity of these weights on this text is known ({ppl:.3f}); not evaluated again.")
    if ppl is None:
        ppl = yield from iter_perplexity(loaded.model, ids, seqlen, batch_size=batch_size,
                                         max_windows=max_windows, device=loaded.device,
                                         should_stop=should_stop, phase=phase)
        if cache:
            ppl_cache.store(key, ppl)
    measured = PerplexityMeasured(phase, source, seqlen, max_windows, count_windows(ids.numel(), seqlen, max_windows),
                                  ppl)
    yield measured
    return measured


def iter_eval_ppl(loaded: LoadedModel, source: str, seqlen: int, should_stop: StopFn = _never,
                  phase: str = "perplexity", max_windows: int | None = None,
                  batch_size: int = 4, data_dir: str | Path | None = None,
                  cache: bool = False) -> Generator[Event, None, float]:
    """The perplexity of :func:`iter_ppl_measured` alone."""
    return (yield from iter_ppl_measured(loaded, source, seqlen, should_stop, phase, max_windows,
                                         batch_size, data_dir, cache)).ppl


def iter_measure(loaded: LoadedModel, settings: EvalSettings, phase: str, should_stop: StopFn = _never,
                 cache: bool = False) -> Generator[Event, None, float]:
    """:func:`iter_eval_ppl` with ``settings``."""
    return (yield from iter_measure_full(loaded, settings, phase, should_stop, cache)).ppl


def iter_measure_full(loaded: LoadedModel, settings: EvalSettings, phase: str, should_stop: StopFn = _never,
                      cache: bool = False) -> Generator[Event, None, PerplexityMeasured]:
    """:func:`iter_ppl_measured` with ``settings``."""
    return (yield from iter_ppl_measured(loaded, settings.source, settings.seqlen, should_stop, phase,
                                         settings.max_windows, cache=cache))


# ---- the dense baseline once the model in memory is pruned ------------------------------------
def weights_bytes(loaded: LoadedModel) -> int:
    """The bytes of ``loaded``'s parameters (what a second copy of the model costs)."""
    return sum(p.numel() * p.element_size() for p in loaded.model.parameters())


def lookup_dense(signature: str | None, pruned: LoadedModel, settings: EvalSettings,
                 batch_size: int = 4, data_dir: str | Path | None = None) -> PerplexityMeasured | None:
    """The original weights' perplexity with ``settings`` from the dense-perplexity cache, without
    those weights: ``signature`` is theirs (:func:`~prunestudio.core.evaluate.ppl_cache.weights_signature`,
    taken before pruning), ``pruned`` the model in memory now (its tokenizer cuts the text). None
    when the signature is unknown or the cache holds no such number. Tokenizes the text (seconds)."""
    from ..evaluate import ppl_cache

    if signature is None:
        return None
    check_seqlen(pruned, settings.seqlen, "evaluation")
    ids = eval_ids(pruned.tokenizer, settings.source, settings.seqlen, data_dir)
    key = ppl_cache.signature_key(signature, ids, settings.seqlen, settings.max_windows, batch_size, pruned.device)
    ppl = ppl_cache.lookup(key)
    if ppl is None:
        return None
    return PerplexityMeasured("ppl-dense", settings.source, settings.seqlen, settings.max_windows,
                              count_windows(ids.numel(), settings.seqlen, settings.max_windows), ppl)


def iter_dense_baseline(pruned: LoadedModel, args: LoadArgs, settings: EvalSettings, signature: str | None,
                        should_stop: StopFn = _never, batch_size: int = 4,
                        data_dir: str | Path | None = None) -> Generator[Event, None, PerplexityMeasured]:
    """The dense model's perplexity while the pruned model ``pruned`` stays in memory, as it is.

    First the dense cache (:func:`lookup_dense`, with the original weights' ``signature``): a number
    measured on these weights with these settings before, by a run or by this function, is shown at
    once. Otherwise a second copy of the original model is loaded from ``args`` (where the model in
    memory came from), measured the way a run measures it (through the cache) and let go: while it
    is measured the original weights take their memory a second time, on the same device. The pruned
    model is never touched, so it can still be evaluated and exported afterwards. A copy whose
    weights differ from ``signature`` (the files changed since the first load) is measured all the
    same, with a warning."""
    from ..evaluate import ppl_cache
    from ..model.memory import format_bytes

    known = lookup_dense(signature, pruned, settings, batch_size, data_dir)
    if known is not None:
        yield Message(f"Dense perplexity {known.ppl:.3f} is known from the cache of dense results; "
                      "the original model is not loaded again.")
        yield known
        return known
    yield Message(f"Loading a second copy of the original model to measure the dense perplexity: about "
                  f"{format_bytes(weights_bytes(pruned))} more memory until it is measured; the pruned model "
                  "stays as it is.")
    dense = yield from iter_load(args, should_stop)
    try:
        now = ppl_cache.weights_signature(dense.model)
        if signature is not None and now is not None and now != signature:
            yield Message("The model's files changed since the pruned model was loaded from them; the dense "
                          "perplexity is that of the files as they are now.", "warning")
        measured = yield from iter_ppl_measured(dense, settings.source, settings.seqlen, should_stop,
                                                "ppl-dense", settings.max_windows, batch_size, data_dir,
                                                cache=True)
    finally:
        device = dense.device
        dense.model = None  # the copy goes now, not when the caller lets the event go
        del dense
        gc.collect()
        empty_cache(device)
    return measured
