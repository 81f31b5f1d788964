"""Perplexity with the convention of the pruning papers (SparseGPT, Wanda).

The evaluation text is joined with blank lines, tokenized once, cut into non-overlapping
``seqlen`` windows, and the perplexity is exp(mean next-token NLL) over all predicted tokens.
A WikiText ``.txt`` file is read as the Hugging Face rows: each line is a row, whitespace-only
lines become empty rows, and rows are joined with "\n\n" (exactly the string the papers tokenize).

Each batch's NLL comes from :class:`NllScorer`: the output head applied a few hundred rows at a
time to the final hidden states (never the whole ``[batch, seqlen, vocab]`` logits: 400 MB per
batch of 4 x 512 for a 49k vocabulary), the cross entropy in float32 a few dozen rows at a time
and the sum in float64; checked on every batch against the model's own logits, and the model's own logits
whenever they differ or the model's structure is not understood.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Generator

import torch

from ..calib.textsources import iter_texts, split_field
from ..errors import Cancelled, EvaluationError
from ..events import Event, PhaseDone, PhaseProgress, PhaseStarted
from ..model.devices import model_device


def eval_text(source: str, max_chars: int | None = None, data_dir: str | Path | None = None) -> str:
    """The single evaluation string for a source: a suite name (``wikitext2``, ``c4``: see
    :mod:`ppl_suites`, read from ``data_dir`` or the default places), a file path, ``hf:...``
    or a preset."""
    from .ppl_suites import is_suite, ppl_suite_text

    if is_suite(source):
        return ppl_suite_text(source, data_dir)
    base, field = split_field(source)
    p = Path(base)
    if p.suffix.lower() in (".txt", ".raw", ".tokens") and p.is_file():
        rows = []
        try:
            with open(p, encoding="utf-8", errors="strict") as f:
                for line in f:
                    rows.append("" if not line.strip() else line)
        except UnicodeDecodeError as e:
            raise EvaluationError(f"The evaluation file {p.name} is not UTF-8 text; save it as UTF-8.") from e
        except OSError as e:
            raise EvaluationError(f"Could not read the evaluation file {p.name}: {e.strerror or e}.") from e
        text = "\n\n".join(rows)
    else:
        parts: list[str] = []
        n = 0
        for t in iter_texts(source):
            parts.append(t)
            n += len(t)
            if max_chars and n >= max_chars:
                break
        text = "\n\n".join(parts)
    if not text.strip():
        raise EvaluationError(f"The evaluation source {source} holds no text.")
    return text


def tokenize_eval(tokenizer: Any, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)


def eval_ids(tokenizer: Any, source: str, seqlen: int, data_dir: str | Path | None = None) -> torch.Tensor:
    """Token ids to evaluate for ``source``; a suite keeps only the tokens its convention keeps
    (C4: the first 256 * seqlen)."""
    from .ppl_suites import suite_max_windows

    ids = tokenize_eval(tokenizer, eval_text(source, data_dir=data_dir))
    mw = suite_max_windows(source)
    return ids[: mw * seqlen] if mw else ids


def iter_perplexity(
    model: Any,
    input_ids: torch.Tensor,
    seqlen: int,
    batch_size: int = 4,
    max_windows: int | None = None,
    device: torch.device | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    phase: str = "perplexity",
    logits: str = "chunked",
) -> Generator[Event, None, float]:
    """Yield progress; return the perplexity of ``input_ids`` (1-D) in ``seqlen`` windows.

    ``logits``: ``"chunked"`` computes the output head a few hundred rows at a time, checked on
    every batch against the model's own logits (:class:`NllScorer`); ``"full"`` takes the model's
    whole logits per batch (the path before chunking, kept for comparisons)."""
    n = input_ids.numel() // seqlen
    if max_windows:
        n = min(n, max_windows)
    if n == 0:
        raise EvaluationError(f"The evaluation text has {input_ids.numel()} tokens, fewer than one window of {seqlen}.")
    device = device or model_device(model)
    scorer = NllScorer(model, logits)
    windows = input_ids[: n * seqlen].view(n, seqlen)
    t0 = time.perf_counter()
    yield PhaseStarted(phase, total=n)
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            if should_stop():
                raise Cancelled()
            batch = windows[i : i + batch_size].to(device)
            nll, predicted = scorer(batch)
            nll_sum += nll.to(nll_sum.device)
            count += predicted
            yield PhaseProgress(phase, min(i + batch_size, n), n)
    ppl = math.exp(nll_sum.item() / count)
    yield PhaseDone(phase, time.perf_counter() - t0)
    return ppl


# Rows of the output head computed at once: about this many bytes of the head's output in its own
# dtype. Measured on a 2-core Zen 4 (head 576 x 49152, 2044 rows): float32 heads are fastest in
# chunks of ~128 MiB (682 rows; 170-256 rows were 15-25% slower), bfloat16 ones in chunks of
# ~32 MiB (341 rows; 682 rows took 1.8x as long with the loss: the chunk's output left the cache).
_CHUNK_BYTES = {4: 128 << 20, 2: 32 << 20}
_CHUNK_ROWS = (64, 2048)  # the fewest and the most rows of one chunk
# Rows of one chunk's cross entropy computed at once: about this many bytes of float32 logits, so
# the float32 copy of a bfloat16 chunk and its log-softmax stay in the cache (same machine: the
# loss of a bfloat16 head 0.26 s -> 0.04 s per batch of 4 x 512; float32 chunks 10% faster).
_LOSS_BYTES = 8 << 20


class NllScorer:
    """The summed next-token NLL of a batch of windows, and how it was computed.

    ``"chunked"`` (the default) never holds a batch's whole ``[batch, seqlen, vocab]`` logits: the
    model runs with a forward pre-hook on its output head (``model.get_output_embeddings()``) that
    keeps the head's input, the final hidden states, and hands the head only each window's last
    position; the head then runs here on chunks of rows (:func:`chunk_rows`), each chunk's cross
    entropy computed in float32 a few dozen rows at a time (:func:`summed_nll`) and the total in
    float64. The hook, not ``get_decoder()`` or
    ``model.model``, finds the trunk's output because it is exactly what the model gives its head,
    whatever the model does before (a final norm outside the decoder, a scale of the hidden states)
    and wherever its trunk lives (a vision-language model's language model).

    Models change the head's output before returning it (Gemma 2/3 ``final_logit_softcapping``,
    Cohere ``logit_scale``, Granite ``logits_scaling``): the candidates read from the config, and
    none, are each applied to the head's output for the positions the model computed itself, and
    the one equal to the model's own logits is kept. Every batch checks it again on those positions
    (a few rows: nothing to pay). When no candidate matches, the head's input is not one
    ``[batch, seqlen, hidden]`` tensor, the head runs more or less than once, or the sliced forward
    fails, the batch is computed again from the model's own logits, as ``"full"`` does, and so is
    every later batch: a perplexity is never computed from logits the model would not give.
    ``"full"`` is the path before chunking (the model's whole logits, then the cross entropy)."""

    def __init__(self, model: Any, logits: str = "chunked") -> None:
        if logits not in ("chunked", "full"):
            raise EvaluationError(f"Unknown way to compute the logits: {logits!r} (chunked or full).")
        self.model = model
        self.head = model.get_output_embeddings() if logits == "chunked" else None
        self.path = "chunked" if self.head is not None else "full"
        self.reason = "" if self.path == "chunked" else (
            "asked for the model's own logits" if logits == "full" else "the model has no output head")
        self._post: Callable[[torch.Tensor], torch.Tensor] | None = None

    def _fall_back(self, reason: str) -> None:
        self.path, self.reason = "full", reason

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(sum of the NLL in float64, number of predicted tokens)`` of ``batch`` ``[b, seqlen]``."""
        if self.path == "chunked":
            got = self._chunked(batch)
            if got is not None:
                return got
        return _full_nll(self.model, batch)

    def _chunked(self, batch: torch.Tensor) -> tuple[torch.Tensor, int] | None:
        calls: list[tuple[torch.Tensor, torch.Tensor] | None] = []

        def keep_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            x = args[0] if args else None
            if calls or not isinstance(x, torch.Tensor) or x.dim() != 3 or tuple(x.shape[:2]) != tuple(batch.shape):
                calls.append(None)
                return None
            last = x[:, -1:]
            calls.append((x, last))
            return (last, *args[1:])

        hook = self.head.register_forward_pre_hook(keep_input)
        try:
            out = self.model(input_ids=batch, use_cache=False)
        except RuntimeError:  # a model that needs the head over every position: its own logits
            self._fall_back("the model failed with its output head on a slice of positions")
            return None
        finally:
            hook.remove()
        own = getattr(out, "logits", None)
        if len(calls) != 1 or calls[0] is None or not isinstance(own, torch.Tensor):
            self._fall_back("the model does not call its output head once on the final hidden states")
            if not calls and isinstance(own, torch.Tensor) and tuple(own.shape[:2]) == tuple(batch.shape):
                return _nll_of_logits(own, batch)  # the head was never hooked: these logits are whole
            return None
        hidden, last = calls[0]
        with torch.no_grad():
            post = self._matching_post(self.head(last), own)
        if post is None:
            self._fall_back("the chunked output head does not give the model's own logits")
            return None
        rows = hidden[:, :-1].reshape(1, -1, hidden.shape[-1])
        target = batch[:, 1:].reshape(-1)
        step = chunk_rows(_vocab_of(own), own.element_size())
        total = torch.zeros((), dtype=torch.float64, device=own.device)
        for i in range(0, rows.shape[1], step):
            z = post(self.head(rows[:, i:i + step]))[0]
            total += summed_nll(z, target[i:i + step]).to(total.device)
        return total, target.numel()

    def _matching_post(self, head_out: torch.Tensor, own: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The post-processing that turns ``head_out`` into the model's ``own`` logits (same
        positions), or None. The one found on an earlier batch is tried first."""
        cands = _post_candidates(self.model)
        if self._post is not None:
            cands = [self._post] + [c for c in cands if c is not self._post]
        want = own.float()
        for post in cands:
            got = post(head_out)
            if got.shape == own.shape and _same_logits(got.float(), want):
                self._post = post
                return post
        return None


def _vocab_of(logits: torch.Tensor) -> int:
    return int(logits.shape[-1])


def chunk_rows(vocab: int, itemsize: int = 4) -> int:
    """Rows of the output head computed at once: about ``_CHUNK_BYTES[itemsize]`` of logits in the
    head's own dtype (a few hundred rows for a vocabulary of 50k-150k), within ``_CHUNK_ROWS``."""
    lo, hi = _CHUNK_ROWS
    budget = _CHUNK_BYTES.get(itemsize, _CHUNK_BYTES[4])
    return max(lo, min(hi, budget // (max(itemsize, 1) * max(vocab, 1))))


def summed_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The summed cross entropy (float64 scalar) of ``logits`` ``[rows, vocab]`` (any float dtype)
    against ``target`` ``[rows]``, computed in float32 on ``_LOSS_BYTES`` of rows at a time: a
    float32 copy of the whole of a low-precision chunk is never made."""
    target = target.to(logits.device)
    step = max(1, _LOSS_BYTES // (4 * max(_vocab_of(logits), 1)))
    total = torch.zeros((), dtype=torch.float64, device=logits.device)
    for i in range(0, logits.shape[0], step):
        total += torch.nn.functional.cross_entropy(
            logits[i:i + step].float(), target[i:i + step], reduction="sum").double()
    return total


def _same_logits(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal up to float32 rounding: the same product on the same rows, so a post-processing the
    model does not apply (a scale, a cap) is never taken for its own, even in bfloat16."""
    tol = 8 * torch.finfo(torch.float32).eps
    return bool(torch.all((got - want).abs() <= tol * (want.abs() + 1.0)).item())


def _post_candidates(model: Any) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """What models do to their head's output, as their config says (the operations in the
    order of transformers' modeling files: Gemma 2/3 ``logits / cap; tanh; * cap``, Cohere
    ``* logit_scale``, Granite ``/ logits_scaling``), each in the head's dtype and in float32,
    and then nothing."""
    cfg = getattr(model, "config", None)
    get_text = getattr(cfg, "get_text_config", None)
    text = get_text() if callable(get_text) else cfg
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    cap = getattr(text, "final_logit_softcapping", None)
    if isinstance(cap, (int, float)) and cap:
        steps.append(lambda z, c=cap: torch.tanh(z / c) * c)
    scale = getattr(model, "logit_scale", None)
    if not isinstance(scale, (int, float)):
        scale = getattr(text, "logit_scale", None)
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        steps.append(lambda z, s=scale: z * s)
    div = getattr(text, "logits_scaling", None)
    if isinstance(div, (int, float)) and not isinstance(div, bool) and div:
        steps.append(lambda z, d=div: z / d)
    cands: list[Callable[[torch.Tensor], torch.Tensor]] = []
    for step in steps:
        cands.append(step)
        cands.append(lambda z, f=step: f(z.float()))
    cands.append(lambda z: z)
    return cands


def _nll_of_logits(logits: torch.Tensor, batch: torch.Tensor) -> tuple[torch.Tensor, int]:
    shift = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    target = batch[:, 1:].reshape(-1)
    return summed_nll(shift, target), target.numel()


def _full_nll(model: Any, batch: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The path before chunking: the model's whole logits, then the cross entropy."""
    return _nll_of_logits(model(input_ids=batch, use_cache=False).logits, batch)


def perplexity(model: Any, tokenizer: Any, source: str, seqlen: int, batch_size: int = 4,
               max_windows: int | None = None, data_dir: str | Path | None = None) -> float:
    ids = eval_ids(tokenizer, source, seqlen, data_dir)
    gen = iter_perplexity(model, ids, seqlen, batch_size, max_windows)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
