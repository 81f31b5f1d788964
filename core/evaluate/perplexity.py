"""Perplexity with the convention of the pruning papers (SparseGPT, Wanda).

The evaluation text is joined with blank lines, tokenized once, cut into non-overlapping
``seqlen`` windows, and the perplexity is exp(mean next-token NLL) over all predicted tokens.
A WikiText ``.txt`` file is read as the Hugging Face rows: each line is a row, whitespace-only
lines become empty rows, and rows are joined with "\n\n" (exactly the string the papers tokenize).
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
) -> Generator[Event, None, float]:
    """Yield progress; return the perplexity of ``input_ids`` (1-D) in ``seqlen`` windows."""
    n = input_ids.numel() // seqlen
    if max_windows:
        n = min(n, max_windows)
    if n == 0:
        raise EvaluationError(f"The evaluation text has {input_ids.numel()} tokens, fewer than one window of {seqlen}.")
    device = device or model_device(model)
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
            logits = model(input_ids=batch, use_cache=False).logits
            shift = logits[:, :-1, :].float()
            target = batch[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                shift.reshape(-1, shift.shape[-1]), target.reshape(-1), reduction="sum"
            )
            nll_sum += nll.double()
            count += target.numel()
            yield PhaseProgress(phase, min(i + batch_size, n), n)
    ppl = math.exp(nll_sum.item() / count)
    yield PhaseDone(phase, time.perf_counter() - t0)
    return ppl


def perplexity(model: Any, tokenizer: Any, source: str, seqlen: int, batch_size: int = 4,
               max_windows: int | None = None, data_dir: str | Path | None = None) -> float:
    ids = eval_ids(tokenizer, source, seqlen, data_dir)
    gen = iter_perplexity(model, ids, seqlen, batch_size, max_windows)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
