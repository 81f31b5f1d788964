"""Cutting calibration text into ``nsamples x seqlen`` token windows, seeded and reproducible.

Two conventions:

* ``random`` (the papers' default, Wanda/SparseGPT on WikiText-2): documents are joined with
  blank lines into one token stream and windows start at seeded random offsets;
* ``document`` (SparseGPT's C4 sampler): each window is a random crop of one randomly chosen
  document that is at least ``seqlen`` tokens long.

A path to a saved calibration set (see :mod:`calibset`) is loaded instead of sampled.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterator

from ..errors import CalibrationError, Cancelled, ConfigError
from .calibset import CalibrationSet, CalibSample, tokenizer_fingerprint
from .textsources import describe_source, iter_texts, split_field

MODES = ("random", "document")
_TOKENIZE_BATCH = 64


def _token_budget(nsamples: int, seqlen: int) -> int:
    """How many tokens of a (possibly huge) source to read: enough for varied windows."""
    return max(8 * nsamples * seqlen, 2_000_000)


def _iter_token_docs(tokenizer: Any, texts: Iterator[str], budget: int,
                     should_stop: Callable[[], bool]) -> Iterator[list[int]]:
    total = 0
    batch: list[str] = []

    def flush() -> Iterator[list[int]]:
        nonlocal total
        enc = tokenizer(batch, add_special_tokens=False)["input_ids"]
        for ids in enc:
            if ids:
                total += len(ids)
                yield ids

    for text in texts:
        if not text:
            continue
        batch.append(text)
        if len(batch) >= _TOKENIZE_BATCH:
            if should_stop():
                raise Cancelled()
            yield from flush()
            batch = []
            if total >= budget:
                return
    if batch:
        yield from flush()


def sample_calibration(
    tokenizer: Any,
    source: str,
    nsamples: int,
    seqlen: int,
    seed: int = 0,
    mode: str = "random",
    text_field: str | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> CalibrationSet:
    """Token windows from any text source (or a saved set), with provenance."""
    if nsamples <= 0:
        raise ConfigError("The number of calibration samples must be at least 1.")
    if seqlen <= 1:
        raise ConfigError("The calibration sequence length must be at least 2 tokens.")
    if mode not in MODES:
        raise ConfigError(f"Unknown sampling mode '{mode}' (use {' or '.join(MODES)}).")
    base, _ = split_field(source)
    if CalibrationSet.is_saved_set(base):
        return _from_saved_set(base, tokenizer, nsamples, seqlen)

    texts = iter_texts(source, text_field)
    budget = _token_budget(nsamples, seqlen)
    rng = random.Random(seed)
    if mode == "random":
        sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
        stream: list[int] = []
        for ids in _iter_token_docs(tokenizer, texts, budget, should_stop):
            if stream:
                stream.extend(sep)
            stream.extend(ids)
        total = len(stream)
        if total < seqlen + 1:
            per = total // nsamples
            possible = (f" Possible: {nsamples} samples of {per} tokens (sequence length {per}), or more text."
                        if per >= 2 else " Add more text.")
            raise CalibrationError(
                f"{describe_source(source)} has only {total:,} tokens, not enough for one window of "
                f"{seqlen}.{possible}"
            )
        if total < nsamples * seqlen:
            raise CalibrationError(
                f"{describe_source(source)} has {total:,} tokens, but {nsamples} x {seqlen} needs "
                f"{nsamples * seqlen:,}. Possible: at most {total // seqlen} samples of {seqlen} "
                f"tokens, or {nsamples} samples of {total // nsamples} tokens."
            )
        windows = []
        for _ in range(nsamples):
            start = rng.randint(0, total - seqlen)
            windows.append(stream[start : start + seqlen])
    else:
        docs = [ids for ids in _iter_token_docs(tokenizer, texts, budget, should_stop)]
        long_docs = [d for d in docs if len(d) >= seqlen]
        if not long_docs:
            longest = max((len(d) for d in docs), default=0)
            raise CalibrationError(
                f"No document of {describe_source(source)} reaches {seqlen} tokens (longest: {longest}). "
                "Use a shorter sequence length or the 'random' (joined) mode."
            )
        windows = []
        for _ in range(nsamples):
            doc = long_docs[rng.randrange(len(long_docs))]
            start = rng.randint(0, len(doc) - seqlen)
            windows.append(doc[start : start + seqlen])

    samples = [CalibSample(input_ids=w, text=_decode(tokenizer, w)) for w in windows]
    return CalibrationSet(
        samples=samples,
        seqlen=seqlen,
        source=source,
        seed=seed,
        settings={"mode": mode, "text_field": text_field},
        tokenizer_name=str(getattr(tokenizer, "name_or_path", "")),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
    )


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


def _from_saved_set(path: str, tokenizer: Any, nsamples: int, seqlen: int) -> CalibrationSet:
    cs = CalibrationSet.load(path, tokenizer)
    kept = cs.kept()
    if not kept:
        raise CalibrationError(f"The saved set {path} has no kept samples.")
    shortest = min(len(s.input_ids) for s in kept)
    if shortest < seqlen:
        raise CalibrationError(
            f"The saved set has samples of {shortest} tokens; sequence length {seqlen} is longer. "
            f"Use --seqlen {shortest} or less."
        )
    if shortest > seqlen:
        for s in kept:
            s.input_ids = s.input_ids[:seqlen]
        cs.seqlen = seqlen
    if len(kept) > nsamples:
        # keep the first nsamples kept samples; the rest are marked as not used
        for s in kept[nsamples:]:
            s.dropped, s.drop_reason = True, f"beyond the {nsamples} samples asked for"
    return cs
