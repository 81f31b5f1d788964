"""Self-generated calibration data, the whole job: generate, score, drop the highest-perplexity
samples, and return the :class:`~prunestudio.core.calib.calibset.CalibrationSet`.

Part of :mod:`prunestudio.core.calib.selfgen` (Ji et al., ICLR 2025); see its package docstring.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable

import torch
import torch.nn.functional as F

from ...errors import CalibrationError, Cancelled, ConfigError
from ...events import Event, Message, PhaseDone, PhaseProgress, PhaseStarted
from ...model import threads
from ...model.devices import logits_micro_batch, model_device
from ..calibset import CalibrationSet, CalibSample, tokenizer_fingerprint
from .prompts import _suppress_mask, document_start, prefixes_from_texts, suppressed_token_ids
from .sampler import _STEP_PROGRESS_SECONDS, _sample_seed, fitting_batch, iter_sample_tokens
from .settings import GenerationSettings

__all__ = ["GenerationSettings", "SampleGenerated", "SampleInProgress", "FilteringDone", "iter_generate",
           "sample_perplexities"]


@dataclass(frozen=True)
class SampleGenerated(Event):
    """One sample is written (sent as soon as its batch finishes; text for the live preview)."""

    index: int
    text: str
    num_tokens: int
    perplexity: float


@dataclass(frozen=True)
class SampleInProgress(Event):
    """The first sample of the batch being decoded, as far as it is written (at most every half
    second, so that a preview can show text before the batch finishes)."""

    index: int
    text: str
    num_tokens: int
    total_tokens: int



@dataclass(frozen=True)
class FilteringDone(Event):
    """Perplexity filtering finished: the indices dropped and the highest perplexity kept."""

    dropped: tuple[int, ...]
    threshold: float



# ------------------------------------------------------------------------------------------------
# perplexity
# ------------------------------------------------------------------------------------------------
def sample_perplexities(
    model: Any,
    input_ids: torch.Tensor,
    batch_size: int = 8,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[float]:
    """Perplexity of each row of ``input_ids`` [n, L]: exp of the mean NLL of tokens 1..L-1.

    A plain full forward pass per micro-batch (sized so that the float32 logits stay within a
    few hundred MB), on the model's device, in float32.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise CalibrationError("Perplexity needs a [samples, tokens] tensor with at least 2 tokens per sample.")
    device = model_device(model)
    vocab = int(getattr(model.config, "vocab_size", 0) or 50_000)
    mb = logits_micro_batch(batch_size, input_ids.shape[1], vocab, copies=2)
    out: list[float] = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, input_ids.shape[0], mb):
            if should_stop():
                raise Cancelled()
            x = input_ids[i : i + mb].to(device)
            logits = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits[:, :-1].float()
            nll = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none").mean(-1)
            out.extend(math.exp(v) for v in nll.tolist())
    return out


# ------------------------------------------------------------------------------------------------
# the whole thing
# ------------------------------------------------------------------------------------------------
def _max_positions(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _decode(tokenizer: Any, ids: list[int]) -> str:
    try:
        return tokenizer.decode(ids, skip_special_tokens=True)
    except Exception:  # noqa: BLE001 - preview text only
        return ""


def iter_generate(
    model: Any,
    tokenizer: Any,
    settings: GenerationSettings,
    prefixes: Iterable[str] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    source_name: str | None = None,
) -> Generator[Event, None, CalibrationSet]:
    """:func:`_iter_generate` with the torch threads that fit the machine now
    (:func:`~prunestudio.core.model.threads.job_threads`: asked for, or the free CPUs), said in a
    :class:`Message` first (unless a job around it, such as a run, chose them already); the previous
    thread count is restored afterwards."""
    outer = threads.active() is None
    with threads.job_threads() as choice:
        if outer:
            yield Message(f"Threads: {choice.reason}")
        return (yield from _iter_generate(model, tokenizer, settings, prefixes, should_stop, source_name))


def _iter_generate(
    model: Any,
    tokenizer: Any,
    settings: GenerationSettings,
    prefixes: Iterable[str] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    source_name: str | None = None,
) -> Generator[Event, None, CalibrationSet]:
    """Generate, score and filter a self-generated calibration set, yielding progress events.

    ``source_name`` names the prefix source for provenance: the set's source becomes
    ``selfgen:<source_name>`` (a name that already starts with ``selfgen`` is kept as is).
    Every sample starts with the model's document start (:func:`document_start`: BOS for
    BOS-trained models, ".\\n\\n<|endoftext|>" for separator-trained ones). ``prefixes`` None is
    zero-data mode: the model writes all the rest, the first tokens included. Otherwise the
    document start is followed by the first ``settings.prefix_tokens`` tokens of a text chosen
    with the seed (:func:`prefixes_from_texts`), and the model continues from there. Yields ``PhaseStarted/Progress/Done`` for
    the ``generate`` and ``filter`` phases, :class:`SampleInProgress` with the first sample of the
    batch being decoded (at most every half second), one :class:`SampleGenerated` per sample as
    soon as its batch is done, and :class:`FilteringDone`; returns the :class:`CalibrationSet` (all samples,
    the filtered ones marked ``dropped`` with a reason). Raises :class:`Cancelled` between
    decoding steps when ``should_stop()`` turns true.
    """
    st = settings
    maxpos = _max_positions(model)
    if maxpos is not None and st.seqlen > maxpos:
        raise ConfigError(
            f"Samples of {st.seqlen} tokens are longer than this model's context ({maxpos} tokens)."
        )
    doc_start, start_kind = document_start(tokenizer)
    start_id = doc_start[-1]
    suppress_ids = suppressed_token_ids(model, tokenizer, start_id)

    if prefixes is None:
        prefix_mode = "none"
        prompts = [list(doc_start) for _ in range(st.n)]
    else:
        prefix_mode = "texts"
        if st.prefix_tokens < 1:
            raise ConfigError("With a prefix source the prefix length must be at least 1 token.")
        heads = prefixes_from_texts(tokenizer, prefixes, st.prefix_tokens, st.n, st.seed)
        prompts = [list(doc_start) + h for h in heads]
    if len(prompts[0]) >= st.seqlen:
        raise ConfigError(
            f"Samples of {st.seqlen} tokens leave no room to generate after the "
            f"{len(prompts[0])}-token start (document start and prefix)."
        )

    device = model_device(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        vocab = int(head.weight.shape[0])
    else:
        vocab = int(model.config.vocab_size)
    try:
        tok_len = len(tokenizer)
    except Exception:  # noqa: BLE001
        tok_len = None
    suppress = _suppress_mask(vocab, suppress_ids, tok_len, device)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = suppress_ids[0] if suppress_ids else 0

    samples: list[CalibSample] = []
    t0 = time.perf_counter()
    generated_tokens = 0
    batch = fitting_batch(model, min(st.batch_size, st.n), st.seqlen, vocab)
    yield PhaseStarted("generate", total=st.n)
    if batch < min(st.batch_size, st.n):
        yield PhaseProgress("generate", done=0, total=st.n,
                            detail=f"{batch} samples at a time (batch size {st.batch_size} would not fit in memory)")
    # As few batches as the batch size allows, of sizes that differ by one at most (79 samples at
    # batch 32: 26 + 26 + 27, not 32 + 32 + 15, whose last batch decodes as many steps for half the
    # tokens). A sample does not depend on the batch it is decoded in.
    nbatches = -(-st.n // batch)
    bounds = [st.n * k // nbatches for k in range(nbatches + 1)]
    for bi in range(nbatches):
        b0 = bounds[bi]
        if should_stop():
            raise Cancelled()
        idx = list(range(b0, bounds[bi + 1]))
        batch_prompts = [prompts[i] for i in idx]
        steps = iter_sample_tokens(
            model, batch_prompts, st.seqlen, st, [_sample_seed(st.seed, i) for i in idx],
            suppress=suppress, pad_id=int(pad_id), should_stop=should_stop,
        )
        last = time.perf_counter()
        while True:
            try:
                step = next(steps)
            except StopIteration as finished:
                tokens, ppl = finished.value
                break
            now = time.perf_counter()
            if now - last >= _STEP_PROGRESS_SECONDS:  # a live batch, at most a few times a second
                last = now
                rate = (generated_tokens + step.done * len(idx)) / max(now - t0, 1e-9)
                yield PhaseProgress(
                    "generate", done=len(samples), total=st.n,
                    detail=f"batch {bi + 1}/{nbatches}: token {step.done}/{step.total}, {rate:.0f} tokens/s",
                    fraction=(b0 + len(idx) * step.done / max(step.total, 1)) / st.n,
                )
                head = list(batch_prompts[0]) + step.generated[0, : st.seqlen - len(batch_prompts[0])].tolist()
                yield SampleInProgress(index=b0, text=_decode(tokenizer, head), num_tokens=len(head),
                                       total_tokens=st.seqlen)
        generated_tokens += sum(st.seqlen - len(p) for p in batch_prompts)
        for i, toks, p in zip(idx, tokens, ppl):
            text = _decode(tokenizer, toks)
            samples.append(CalibSample(input_ids=toks, text=text, perplexity=p))
            yield SampleGenerated(index=i, text=text, num_tokens=len(toks), perplexity=p)
        elapsed = time.perf_counter() - t0
        yield PhaseProgress(
            "generate", done=len(samples), total=st.n,
            detail=f"{generated_tokens / max(elapsed, 1e-9):.0f} tokens/s",
        )
    gen_seconds = time.perf_counter() - t0
    yield PhaseDone("generate", seconds=gen_seconds)

    # ---- filter: drop floor(n * drop_top) samples with the highest perplexity --------------
    t1 = time.perf_counter()
    yield PhaseStarted("filter", total=st.n)
    k = st.num_dropped

    def key(i: int) -> tuple[float, int]:
        p = samples[i].perplexity
        p = float("inf") if p is None or not math.isfinite(p) else p
        return (-p, i)  # highest first; ties: lower index dropped first

    ranked = sorted(range(len(samples)), key=key)
    dropped = sorted(ranked[:k])
    kept_ppl = [samples[i].perplexity for i in ranked[k:]]
    threshold = max((p for p in kept_ppl if p is not None and math.isfinite(p)), default=float("nan"))
    pct = f"{st.drop_top * 100:g}%"
    for i in dropped:
        s = samples[i]
        s.dropped = True
        s.drop_reason = f"perplexity {s.perplexity:.1f} in the highest {pct} (threshold {threshold:.1f})"
    yield PhaseProgress("filter", done=st.n, total=st.n, detail=f"dropped {len(dropped)}")
    yield FilteringDone(dropped=tuple(dropped), threshold=threshold)
    yield PhaseDone("filter", seconds=time.perf_counter() - t1)

    if not source_name or source_name == "selfgen":
        source = "selfgen"
    elif source_name.startswith("selfgen:"):
        source = source_name  # already a calibration source string ("selfgen:c4")
    else:
        source = f"selfgen:{source_name}"
    cfg = st.to_dict()
    cfg.update(
        method="selfgen",
        prefix_mode=prefix_mode,
        prefix_source=(source.split(":", 1)[1] if ":" in source else None) if prefixes is not None else None,
        start_token_id=start_id,
        start_token=tokenizer.convert_ids_to_tokens(start_id),
        start_token_rule=start_kind,
        start_ids=list(doc_start),
        suppressed_token_ids=[i for i in suppress_ids if i < vocab],
        drop_count=k,
    )
    return CalibrationSet(
        samples=samples,
        seqlen=st.seqlen,
        source=source,
        seed=st.seed,
        settings=cfg,
        tokenizer_name=str(getattr(tokenizer, "name_or_path", "") or ""),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
    )

