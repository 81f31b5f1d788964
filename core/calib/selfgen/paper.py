"""Self-generation with the paper's protocol (Ji et al., ICLR 2025, as their reference code does it).

1. Every sample starts with a prefix of real text: the first ``prefix_tokens`` (2) tokens of a
   source text as the tokenizer encodes it (:func:`~.prompts.paper_prefix_pool`).
2. The model continues it by sampling (the same processors and per-sample random streams as the
   ``windows`` protocol, :mod:`.sampler`) and *may end it at end-of-text*: samples vary in
   length, at most ``seqlen`` tokens, prefix included (the reference allows 2,048 new tokens and
   calibrates on 2,048-token windows).
3. Of the samples used, the ``floor(k * drop_top)`` with the highest perplexity are dropped
   (reference: those above the 80th percentile).
4. The rest are joined, in the order they were generated, into one token stream and cut into
   ``n`` consecutive windows of ``seqlen`` tokens.

How many samples are used: the smallest ``k`` whose kept samples give ``n * seqlen`` tokens.
Samples are generated in batches until that ``k`` is reached; a batch may write a few more,
which are left out. ``k`` depends only on the samples themselves, so the set does not depend on
the batch size, and sample ``i`` depends only on the seed, its index and its prefix. The first
batch is the full batch size; a later one only as large as the samples still missing, estimated
from those written so far with a margin (:func:`next_batch_size`): on the demo model the first
80 samples fill about 70 of the 89 needed for 16 windows of 512, and a second full batch wrote
71 samples that were never used. Rows that end leave their batch (:mod:`.sampler`).

Where this differs from the reference, on purpose:

* the samples are joined as the model wrote them, token for token (prefix with the tokenizer's
  BOS if it adds one, text, and the end-of-text token that ended it), the way pre-training packs
  documents; the reference decodes them without special tokens, joins the texts with a space and
  tokenizes again, which can change tokens at the seams;
* the windows are cut one after the other, each token used once; the reference draws 128 windows
  at random (possibly overlapping) offsets of the joined stream;
* the reference generates from 5,000 Wikipedia texts, whatever it needs; here sampling stops as
  soon as the windows are filled (at most :data:`MAX_SAMPLES_PER_WINDOW` samples per window).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Generator, Iterable

from ...errors import CalibrationError, Cancelled, ConfigError
from ...events import Event, Message, PhaseDone, PhaseProgress, PhaseStarted
from ...model import threads
from ...model.devices import model_device
from ..calibset import CalibrationSet, CalibSample, tokenizer_fingerprint
from .sampler import _STEP_PROGRESS_SECONDS, _cut_at_stop, _sample_seed, fitting_batch, iter_sample_tokens
from .generate import FilteringDone, SampleGenerated, SampleInProgress, _decode, _max_positions
from .prompts import _suppress_mask, end_of_text_ids, paper_prefix_pool, suppressed_token_ids
from .settings import GenerationSettings

__all__ = ["iter_generate_paper", "PREFIX_POOL_PER_WINDOW", "MAX_SAMPLES_PER_WINDOW", "samples_needed",
           "next_batch_size"]

# Source texts read for prefixes: this many per window asked for (the pool is cycled if more
# samples are needed).
PREFIX_POOL_PER_WINDOW = 8
# Generation gives up (one readable error) after this many samples per window: the model ends
# its texts so early that the windows cannot be filled.
MAX_SAMPLES_PER_WINDOW = 32


# A later batch writes this many times the samples estimated to be missing (and at least
# NEXT_BATCH_MIN): an underestimate costs one more batch, an overestimate only the extra rows.
NEXT_BATCH_MARGIN = 1.5
NEXT_BATCH_MIN = 8


def next_batch_size(lengths: list[int], ppls: list[float | None], drop_top: float, tokens: int,
                    batch: int) -> int:
    """How many samples the next batch writes: ``batch`` before any sample exists; then the
    samples still missing for ``tokens`` kept tokens at the mean length so far, less the share
    dropped, times :data:`NEXT_BATCH_MARGIN`, within ``[NEXT_BATCH_MIN, batch]``."""
    if not lengths:
        return batch
    gone = set(dropped_of(ppls, drop_top))
    kept = sum(n for i, n in enumerate(lengths) if i not in gone)
    per_sample = max(1.0, sum(lengths) / len(lengths) * (1.0 - drop_top))
    missing = max(0, tokens - kept) / per_sample
    return max(1, min(batch, max(NEXT_BATCH_MIN, math.ceil(missing * NEXT_BATCH_MARGIN))))


def _rank_key(ppl: float | None, i: int) -> tuple[float, int]:
    p = float("inf") if ppl is None or not math.isfinite(ppl) else ppl
    return (-p, i)  # highest first; ties: the lower index dropped first (as the windows protocol)


def dropped_of(ppls: list[float | None], drop_top: float) -> list[int]:
    """Indices (sorted) of the ``floor(k * drop_top)`` samples with the highest perplexity."""
    k = int(math.floor(len(ppls) * drop_top + 1e-9))
    ranked = sorted(range(len(ppls)), key=lambda i: _rank_key(ppls[i], i))
    return sorted(ranked[:k])


def samples_needed(lengths: list[int], ppls: list[float | None], drop_top: float, tokens: int,
                   start: int = 1) -> int | None:
    """The smallest ``k >= start`` whose first ``k`` samples, less the dropped ones, hold at least
    ``tokens`` tokens; None when no ``k`` up to ``len(lengths)`` does."""
    total = sum(lengths[: start - 1])
    for k in range(start, len(lengths) + 1):
        total += lengths[k - 1]
        if total < tokens:
            continue  # even with nothing dropped it is too short
        dropped = dropped_of(ppls[:k], drop_top)
        if total - sum(lengths[i] for i in dropped) >= tokens:
            return k
    return None


def iter_generate_paper(
    model: Any,
    tokenizer: Any,
    settings: GenerationSettings,
    prefixes: Iterable[str] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    source_name: str | None = None,
) -> Generator[Event, None, CalibrationSet]:
    """The paper's protocol (module docstring) with the torch threads that fit the machine now;
    events as the ``windows`` protocol's (:func:`~.generate.iter_generate`): one
    :class:`SampleGenerated` per sample used (its own length), :class:`SampleInProgress`,
    :class:`FilteringDone`; returns the set of ``settings.n`` windows of ``settings.seqlen``."""
    outer = threads.active() is None
    with threads.job_threads() as choice:
        if outer:
            yield Message(f"Threads: {choice.reason}")
        return (yield from _iter_paper(model, tokenizer, settings, prefixes, should_stop, source_name))


def _iter_paper(model: Any, tokenizer: Any, st: GenerationSettings, prefixes: Iterable[str] | None,
                should_stop: Callable[[], bool], source_name: str | None) -> Generator[Event, None, CalibrationSet]:
    if prefixes is None:
        raise ConfigError("The paper's protocol starts every sample with the first tokens of a real text: "
                          "choose a prefix source (selfgen:SOURCE), or use the windows protocol for zero-data "
                          "generation.")
    maxpos = _max_positions(model)
    if maxpos is not None and st.seqlen > maxpos:
        raise ConfigError(f"Samples of {st.seqlen} tokens are longer than this model's context ({maxpos} tokens).")
    pool = paper_prefix_pool(tokenizer, prefixes, st.prefix_tokens, PREFIX_POOL_PER_WINDOW * st.n, st.seed)
    stops = end_of_text_ids(model, tokenizer)
    if not stops:
        raise CalibrationError("This tokenizer has no end-of-text token, so samples cannot end by themselves.",
                               hint="Use the windows protocol.")
    suppress_ids = [i for i in suppressed_token_ids(model, tokenizer) if i not in stops]

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = int(head.weight.shape[0]) if head is not None and getattr(head, "weight", None) is not None \
        else int(model.config.vocab_size)
    try:
        tok_len = len(tokenizer)
    except Exception:  # noqa: BLE001
        tok_len = None
    device = model_device(model)
    suppress = _suppress_mask(vocab, suppress_ids, tok_len, device)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = stops[0]

    need_tokens = st.n * st.seqlen
    cap = MAX_SAMPLES_PER_WINDOW * st.n
    batch = fitting_batch(model, st.batch_size, st.seqlen, vocab)
    samples: list[CalibSample] = []
    ended_eos: list[bool] = []
    k_used: int | None = None
    t0 = time.perf_counter()
    written = 0
    yield PhaseStarted("generate", total=st.n)
    if batch < st.batch_size:
        yield PhaseProgress("generate", done=0, total=st.n,
                            detail=f"{batch} samples at a time (batch size {st.batch_size} would not fit in memory)")
    stop_set = set(stops)
    while k_used is None:
        b0 = len(samples)
        if b0 >= cap:
            gone = set(dropped_of([x.perplexity for x in samples], st.drop_top))
            kept_tokens = sum(len(s.input_ids) for i, s in enumerate(samples) if i not in gone)
            raise CalibrationError(
                f"{cap} samples gave only {kept_tokens:,} tokens after filtering, not the {need_tokens:,} that "
                f"{st.n} windows of {st.seqlen} need: the model ends its texts very early.",
                hint="Ask for fewer or shorter windows, or use the windows protocol.")
        if should_stop():
            raise Cancelled()
        size = next_batch_size([len(x.input_ids) for x in samples], [x.perplexity for x in samples],
                               st.drop_top, need_tokens, batch)
        idx = list(range(b0, min(cap, b0 + size)))
        prompts = [pool[i % len(pool)] for i in idx]
        if max(len(p) for p in prompts) >= st.seqlen:
            raise ConfigError(f"Samples of {st.seqlen} tokens leave no room to generate after the "
                              f"{max(len(p) for p in prompts)}-token prefix.")
        steps = iter_sample_tokens(
            model, prompts, st.seqlen, st, [_sample_seed(st.seed, i) for i in idx],
            suppress=suppress, pad_id=int(pad_id), should_stop=should_stop, stop_ids=stops)
        last = time.perf_counter()
        while True:
            try:
                step = next(steps)
            except StopIteration as finished:
                tokens, ppl = finished.value
                break
            now = time.perf_counter()
            if now - last >= _STEP_PROGRESS_SECONDS:
                last = now
                yield PhaseProgress("generate", done=min(st.n, written // st.seqlen), total=st.n,
                                    detail=f"samples {idx[0] + 1}-{idx[-1] + 1}: token {step.done}/{step.total}")
                row = list(prompts[0]) + step.generated[0].tolist()
                row = _cut_at_stop(row[: st.seqlen], len(prompts[0]), stop_set)
                yield SampleInProgress(index=idx[0], text=_decode(tokenizer, row), num_tokens=len(row),
                                       total_tokens=st.seqlen)
        new = [CalibSample(input_ids=t, text=_decode(tokenizer, t), perplexity=p) for t, p in zip(tokens, ppl)]
        samples.extend(new)
        ended_eos.extend(len(t) < st.seqlen or t[-1] in stop_set for t in tokens)
        k_used = samples_needed([len(s.input_ids) for s in samples], [s.perplexity for s in samples],
                                st.drop_top, need_tokens, start=b0 + 1)
        used = len(samples) if k_used is None else k_used
        for i in range(b0, used):
            s = samples[i]
            yield SampleGenerated(index=i, text=s.text, num_tokens=len(s.input_ids), perplexity=s.perplexity)
        written = sum(len(s.input_ids) for s in samples[:used])
        yield PhaseProgress("generate", done=min(st.n, written // st.seqlen), total=st.n,
                            detail=f"{used} samples, {written:,} tokens")
    del samples[k_used:], ended_eos[k_used:]
    yield PhaseDone("generate", seconds=time.perf_counter() - t0)

    t1 = time.perf_counter()
    yield PhaseStarted("filter", total=len(samples))
    dropped = dropped_of([s.perplexity for s in samples], st.drop_top)
    gone = set(dropped)
    kept = [i for i in range(len(samples)) if i not in gone]
    threshold = max((samples[i].perplexity for i in kept if samples[i].perplexity is not None
                     and math.isfinite(samples[i].perplexity)), default=float("nan"))
    yield PhaseProgress("filter", done=len(samples), total=len(samples), detail=f"dropped {len(dropped)}")
    yield FilteringDone(dropped=tuple(dropped), threshold=threshold)
    yield PhaseDone("filter", seconds=time.perf_counter() - t1)

    stream: list[int] = []
    for i in kept:
        stream.extend(samples[i].input_ids)
    windows = [stream[j * st.seqlen:(j + 1) * st.seqlen] for j in range(st.n)]
    yield Message(f"Joined {len(kept)} samples ({len(stream):,} tokens) and cut {st.n} windows of {st.seqlen} "
                  f"tokens; {len(stream) - need_tokens:,} tokens left over.")

    if not source_name or source_name == "selfgen":
        source = "selfgen"
    elif source_name.startswith("selfgen:"):
        source = source_name
    else:
        source = f"selfgen:{source_name}"
    cfg = st.to_dict()
    cfg.update(
        method="selfgen",
        protocol="paper",
        prefix_mode="texts",
        prefix_source=source.split(":", 1)[1] if ":" in source else None,
        end_of_text_ids=stops,
        suppressed_token_ids=[i for i in suppress_ids if i < vocab],
        samples_used=len(samples),
        drop_count=len(dropped),
        perplexity_threshold=threshold,
        stream_tokens=len(stream),
        # one entry per sample used, in the order they were joined (the dropped ones too)
        documents=[{"tokens": len(s.input_ids), "prefix": s.input_ids[: st.prefix_tokens],
                    "perplexity": s.perplexity, "ended_at_eos": e, "dropped": i in gone}
                   for i, (s, e) in enumerate(zip(samples, ended_eos))],
    )
    return CalibrationSet(
        samples=[CalibSample(input_ids=w, text=_decode(tokenizer, w)) for w in windows],
        seqlen=st.seqlen,
        source=source,
        seed=st.seed,
        settings=cfg,
        tokenizer_name=str(getattr(tokenizer, "name_or_path", "") or ""),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
    )
