"""Summed log-likelihoods of continuations given their contexts, batched the way the zero-shot
tasks need them (:mod:`.zeroshot` turns them into accuracies).

* tokenisation as lm-evaluation-harness's (:mod:`.encoding`); the model sees
  ``(context_enc + continuation_enc)`` left-truncated to its maximum length;
* requests are sorted by length and batched across choices and questions, on the model's own
  device. Requests that share their beginning (the choices of one question) run it once with its
  KV cache kept; each one's remaining tokens then run on a copy of that cache (on a CPU in parts of
  similar lengths, :func:`tail_parts`), and the output head is applied only where continuation
  tokens are predicted (:func:`iter_loglikelihoods` says when
  this applies; elsewhere one right-padded forward per batch of whole rows).
"""

from __future__ import annotations

import copy
import inspect
import time
import traceback
from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import Cancelled, EvaluationError
from ..events import Event, PhaseDone, PhaseProgress, PhaseStarted, run_to_completion
from ..model.devices import is_out_of_memory, model_device
from .encoding import encode_pairs, model_max_length, pad_token_id

__all__ = ["encode_pairs", "model_max_length", "iter_loglikelihoods", "loglikelihoods"]


# --------------------------------------------------------------------------------------------
# Batched log-likelihoods
# --------------------------------------------------------------------------------------------


def _forward_params(model: Any) -> frozenset[str]:
    """The names the model's forward takes (empty when they cannot be read)."""
    try:
        return frozenset(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError, AttributeError):
        return frozenset()


def _forward_options(model: Any) -> tuple[bool, bool]:
    """(takes ``logits_to_keep``, takes ``use_cache``) for the model's forward."""
    params = _forward_params(model)
    return "logits_to_keep" in params, "use_cache" in params


def _logits_of(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)):
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise EvaluationError("The model's forward pass did not return logits.")
    return logits


def _cache_argument(model: Any) -> str | None:
    """The keyword under which the model's forward takes a KV cache to continue from, when the
    shared-context path may use it at all (see :func:`iter_loglikelihoods`); otherwise None.

    Required: a forward taking the attention mask, explicit position ids, ``use_cache``,
    ``logits_to_keep`` and a cache (``cache`` in transformers 5, ``past_key_values`` before);
    a decoder-only model; attention computed by ``sdpa`` or ``eager`` (both apply a 2-D mask with
    holes as it is); no chunked attention. What cache comes back is checked batch by batch
    (:func:`_expandable_cache`).
    """
    params = _forward_params(model)
    if not {"attention_mask", "position_ids", "use_cache", "logits_to_keep"} <= params:
        return None
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return None
    if getattr(config, "attention_chunk_size", None):
        return None
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return None
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def _expandable_cache(output: Any) -> Any | None:
    """The KV cache in ``output`` when its rows can be picked and repeated exactly: a
    transformers ``DynamicCache`` whose every layer is a plain (full or sliding-window) key/value
    layer. Recurrent or linear-attention states, quantised, static or offloaded caches: None."""
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = getattr(output, "past_key_values", None)
    try:
        from transformers.cache_utils import (
            DynamicCache,
            DynamicLayer,
            DynamicSlidingWindowLayer,
        )
    except ImportError:
        return None
    if type(cache) is not DynamicCache:
        return None
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers):
        return None
    return cache


def _sliding_window(model: Any) -> int | None:
    """The smallest attention window of the model, or None when every layer sees everything."""
    config = getattr(model, "config", None)
    windows = [getattr(config, attr, None) for attr in ("sliding_window", "sliding_window_size")]
    sizes = [w for w in windows if isinstance(w, int) and not isinstance(w, bool) and w > 0]
    return min(sizes) if sizes else None


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return n


def _run_model(model: Any, batch_size: int, **kwargs: Any) -> Any:
    """``model(**kwargs)`` with its failures turned into one :class:`EvaluationError` sentence."""
    try:
        return model(**kwargs)
    except EvaluationError:
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            raise EvaluationError(
                f"Ran out of memory during evaluation with a batch size of {batch_size}.",
                hint="Lower the evaluation batch size.",
                details=traceback.format_exc(),
            ) from None
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise EvaluationError(
            f"The model failed during evaluation ({exc.__class__.__name__}: {first_line}).",
            details=traceback.format_exc(),
        ) from None


@dataclass
class _Rows:
    """The distinct model inputs of a set of requests and what each one scores."""

    inputs: list[list[int]]  # model input of each row (already left-truncated)
    members: list[list[int]]  # the requests each row scores
    span: list[int]  # logit positions each row needs, at its end
    cont_lens: list[int]  # per request: continuation tokens scored
    targets: list[list[int]]  # per request: those tokens


def _score_picked(
    logits: torch.Tensor, rows: _Rows, r: int, scored: list[int], sums: list[torch.Tensor]
) -> None:
    """Add the summed log-likelihoods of row ``r``'s requests; ``logits`` holds exactly the
    ``span[r]`` positions that predict the row's last ``span[r]`` tokens."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    span = rows.span[r]
    # Target tokens, right-aligned to the row's last positions.
    tgt = torch.tensor(
        [[0] * (span - rows.cont_lens[i]) + rows.targets[i] for i in rows.members[r]], dtype=torch.long
    ).to(logp.device)
    picked = logp.gather(-1, tgt.T)  # (span, members)
    for j, i in enumerate(rows.members[r]):
        sums.append(picked[span - rows.cont_lens[i] :, j].sum())
        scored.append(i)


def _score_flat(
    model: Any, rows: _Rows, batch: Sequence[int], results: list[float], pad_id: int, device: Any,
    options: tuple[bool, bool], batch_size: int,
) -> None:
    """One forward over whole rows, right-padded (the plain path)."""
    takes_keep, takes_cache = options
    inputs, span = rows.inputs, rows.span
    width = max(len(inputs[r]) for r in batch)
    # Logit positions needed: from the first continuation-predicting one to the end.
    keep = max(width - len(inputs[r]) + span[r] for r in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for k, r in enumerate(batch):
        ids[k, : len(inputs[r])] = torch.tensor(inputs[r], dtype=torch.long)
        mask[k, : len(inputs[r])] = 1
    kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if takes_keep:
        kwargs["logits_to_keep"] = keep
    if takes_cache:
        kwargs["use_cache"] = False
    logits = _logits_of(_run_model(model, batch_size, **kwargs))[:, -keep:, :]
    offset = width - keep
    scored: list[int] = []
    sums: list[torch.Tensor] = []
    for k, r in enumerate(batch):
        end = len(inputs[r]) - offset
        _score_picked(logits[k, end - span[r] : end], rows, r, scored, sums)
    for i, value in zip(scored, torch.stack(sums).tolist()):
        results[i] = value


def _score_shared(
    model: Any, rows: _Rows, groups: Sequence[tuple[int, list[int]]], results: list[float], pad_id: int,
    device: Any, cache_arg: str, batch_size: int,
) -> bool:
    """The rows of ``groups`` (each ``(shared, rows)``: rows whose first ``shared`` tokens are
    the same) in two forwards: the shared prefixes once each, keeping their KV cache; then every
    row's remaining tokens on its group's cache (rows picked from it), with explicit positions
    and a mask that hides the prefixes' padding. Logits only where continuation tokens are
    predicted. Returns False, having scored nothing, when the cache the model returned cannot be
    expanded exactly (the caller then takes the plain path)."""
    inputs = rows.inputs
    n_groups = len(groups)
    w1 = max(shared for shared, _ in groups)
    ids1 = torch.full((n_groups, w1), pad_id, dtype=torch.long)
    mask1 = torch.zeros((n_groups, w1), dtype=torch.long)
    for g, (shared, members) in enumerate(groups):
        ids1[g, :shared] = torch.tensor(inputs[members[0]][:shared], dtype=torch.long)
        mask1[g, :shared] = 1
    out = _run_model(
        model, batch_size, input_ids=ids1.to(device), attention_mask=mask1.to(device),
        position_ids=torch.arange(w1).expand(n_groups, w1).to(device), use_cache=True, logits_to_keep=1,
    )
    cache = _expandable_cache(out)
    del out
    if cache is None:
        return False

    flat = [(g, r) for g, (_shared, members) in enumerate(groups) for r in members]
    flat.sort(key=lambda gr: -(len(inputs[gr[1]]) - groups[gr[0]][0]))  # longest remainder first
    parts = tail_parts([len(inputs[r]) - groups[g][0] for g, r in flat], _part_overhead(device))
    scored: list[int] = []
    sums: list[torch.Tensor] = []
    for j, (lo, hi) in enumerate(parts):
        # each part continues from its own rows of the prefixes' cache (the last one from the cache itself)
        part_cache = cache if j == len(parts) - 1 else copy.deepcopy(cache)
        _score_remainders(model, rows, groups, flat[lo:hi], part_cache, mask1, pad_id, device, cache_arg,
                          batch_size, scored, sums)
    del cache
    for i, value in zip(scored, torch.stack(sums).tolist()):
        results[i] = value
    return True


# Step 2 of the shared path on the CPU: a forward of its own for rows whose remainders are much
# shorter than the batch's longest costs about this many row-tokens (a forward's fixed cost, every
# weight read once, and a copy of the prefixes' cache), against the padding it saves. Measured on
# the demo model, 2-core Zen 4, 50 items of the five tasks (NOTES, issue 20 target 3): 96 takes
# 0.94x the time of one part per batch (three runs each way, alternating; 25% of the row-tokens
# are padding instead of 33%); single runs at 16 to 320 were no better. A small forward is much
# less efficient than a large one on a CPU (one row of one token: 54 ms, 16 x 20: 449 ms), so
# padding saved is worth less than its FLOPs. On a GPU the padding is nearly free and a call is
# not: one part there.
_CPU_PART_OVERHEAD = 96


def _part_overhead(device: Any) -> float:
    return _CPU_PART_OVERHEAD if torch.device(device).type == "cpu" else float("inf")


def tail_parts(widths: Sequence[int], overhead: float) -> list[tuple[int, int]]:
    """Split rows whose widths are sorted longest first into consecutive parts, each padded to
    its first row's width, minimising the padded row-tokens plus ``overhead`` per part (an exact
    dynamic programme over the split points). ``[(start, stop), ...]`` covering every row."""
    n = len(widths)
    if n == 0:
        return []
    if overhead == float("inf"):
        return [(0, n)]
    best = [0.0] + [float("inf")] * n  # best[k]: cost of the first k rows
    cut = [0] * (n + 1)
    for k in range(1, n + 1):
        for i in range(k):  # the last part is rows i..k-1, padded to widths[i]
            c = best[i] + (k - i) * widths[i] + overhead
            if c < best[k]:
                best[k], cut[k] = c, i
    parts: list[tuple[int, int]] = []
    k = n
    while k > 0:
        parts.append((cut[k], k))
        k = cut[k]
    return parts[::-1]


def _score_remainders(
    model: Any, rows: _Rows, groups: Sequence[tuple[int, list[int]]], flat: Sequence[tuple[int, int]],
    cache: Any, mask1: torch.Tensor, pad_id: int, device: Any, cache_arg: str, batch_size: int,
    scored: list[int], sums: list[torch.Tensor],
) -> None:
    """Step 2 for the rows ``flat`` (``(group, row)`` pairs): their remaining tokens, right-padded,
    on their groups' rows of ``cache`` (picked in place), with explicit positions and the
    prefixes' mask; logits only from the first position that predicts a continuation token."""
    inputs, span = rows.inputs, rows.span
    w2 = max(len(inputs[r]) - groups[g][0] for g, r in flat)
    ids2 = torch.full((len(flat), w2), pad_id, dtype=torch.long)
    mask2 = torch.zeros((len(flat), w2), dtype=torch.long)
    pos2 = torch.empty((len(flat), w2), dtype=torch.long)
    for k, (g, r) in enumerate(flat):
        shared = groups[g][0]
        tail = inputs[r][shared:]
        ids2[k, : len(tail)] = torch.tensor(tail, dtype=torch.long)
        mask2[k, : len(tail)] = 1
        pos2[k] = torch.arange(shared, shared + w2)
    # Step-2 row k continues from its group's cache row: the prefix mask comes with it.
    pick = torch.tensor([g for g, _r in flat], dtype=torch.long)
    cache.batch_select_indices(pick.to(device))
    mask = torch.cat([mask1[pick], mask2], dim=1)
    # Logits from the first position that predicts a continuation token, to the end.
    keep = max(w2 - (len(inputs[r]) - groups[g][0] - span[r]) for g, r in flat)
    out = _run_model(
        model, batch_size, input_ids=ids2.to(device), attention_mask=mask.to(device),
        position_ids=pos2.to(device), use_cache=False, logits_to_keep=keep, **{cache_arg: cache},
    )
    logits = _logits_of(out)[:, -keep:, :]
    del out
    offset = w2 - keep
    for k, (g, r) in enumerate(flat):
        end = len(inputs[r]) - groups[g][0] - offset
        _score_picked(logits[k, end - span[r] : end], rows, r, scored, sums)


def iter_loglikelihoods(
    model: Any,
    tokenizer: Any,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 16,
    should_stop: Callable[[], bool] = lambda: False,
    max_length: int | None = None,
    phase: str = "loglikelihood",
    groups: Sequence[Hashable] | None = None,
) -> Generator[Event, None, list[float]]:
    """Summed log-likelihood of each continuation given its context, in request order.

    Requests that share a beginning are computed together: by default those with the same
    context tokens (the choices of one question), or, with ``groups`` (one key per request, e.g.
    the question's index), those of one group, whatever of their inputs they share (WinoGrande's
    two contexts share their words up to the blank). The shared prefix runs once, with its KV
    cache kept; each row's remaining tokens then run on a copy of its group's cache, and the
    output head is applied only where continuation tokens are predicted. That gives the same
    numbers as one right-padded forward per row (float rounding aside) wherever it is used: only
    models whose cache is a plain transformers key/value cache (checked on the cache each batch
    returns, :func:`_expandable_cache`), only where every row of the batch fits in the model's
    sliding attention window, and only groups of at least two rows that share at least one
    token before the first scored position. Everything else takes the plain path (one forward
    over whole rows, right-padded). Rows are sorted longest first in both paths.

    Yields ``PhaseStarted(phase, total=batches)``, one ``PhaseProgress`` per batch and
    ``PhaseDone``; raises :class:`Cancelled` when ``should_stop()`` turns true between batches.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EvaluationError(f"The batch size must be a whole number of at least 1 (got {batch_size!r}).")
    if groups is not None and len(groups) != len(requests):
        raise EvaluationError(f"{len(groups)} group keys were given for {len(requests)} requests.")
    started = time.perf_counter()
    max_len = max_length or model_max_length(model, tokenizer)
    pairs = encode_pairs(tokenizer, requests)

    # Model input (left-truncated to max_len) and the number of continuation tokens scored.
    inputs: list[list[int]] = []
    cont_lens: list[int] = []
    targets: list[list[int]] = []
    for context_enc, cont_enc in pairs:
        whole = context_enc + cont_enc
        inp = whole[-(max_len + 1) :][:-1]
        n = min(len(cont_enc), len(inp))
        inputs.append(inp)
        cont_lens.append(n)
        targets.append(cont_enc[len(cont_enc) - n :])

    # Requests with the same model input (e.g. single-token choices after one context, as in
    # BoolQ) share one row of a batch, as lm-eval's grouping by context does.
    row_of: dict[tuple[int, ...], int] = {}
    rows = _Rows(inputs=[], members=[], span=[], cont_lens=cont_lens, targets=targets)
    for i, inp in enumerate(inputs):
        if cont_lens[i] == 0:
            continue  # nothing to score: log-likelihood 0
        r = row_of.setdefault(tuple(inp), len(rows.inputs))
        if r == len(rows.inputs):
            rows.inputs.append(inp)
            rows.members.append([])
        rows.members[r].append(i)
    rows.span = [max(cont_lens[i] for i in m) for m in rows.members]
    n_rows = len(rows.inputs)
    length = [len(inp) for inp in rows.inputs]

    # Groups of rows that share a prefix (keyed by the first request of each row).
    cache_arg = _cache_argument(model)
    shared_units: list[tuple[int, list[int]]] = []
    plain: list[int] = []
    if cache_arg is not None:
        by_key: dict[Hashable, list[int]] = {}
        for r in range(n_rows):
            first = rows.members[r][0]
            key = groups[first] if groups is not None else tuple(pairs[first][0])
            by_key.setdefault(key, []).append(r)
        for members in by_key.values():
            if len(members) >= 2:
                # Shared tokens, stopping before the first position whose logits are scored.
                shared = min(
                    _common_prefix([rows.inputs[r] for r in members]),
                    min(length[r] - rows.span[r] for r in members),
                )
                if shared >= 1:
                    shared_units.append((shared, sorted(members, key=lambda r: -length[r])))
                    continue
            plain.extend(members)
    else:
        plain = list(range(n_rows))

    # Longest first (a too-big batch fails at once), as lm-eval orders them. A shared batch
    # holds whole groups, up to ``batch_size`` rows (a bigger group alone).
    plain.sort(key=lambda r: -length[r])
    shared_units.sort(key=lambda u: -max(length[r] for r in u[1]))
    batches: list[tuple[bool, list[Any]]] = [(False, plain[k : k + batch_size]) for k in range(0, len(plain), batch_size)]
    current: list[tuple[int, list[int]]] = []
    for unit in shared_units:
        if current and sum(len(u[1]) for u in current) + len(unit[1]) > batch_size:
            batches.append((True, current))
            current = []
        current.append(unit)
    if current:
        batches.append((True, current))

    def batch_length(batch: tuple[bool, list[Any]]) -> int:
        shared, units = batch
        return max(length[r] for u in units for r in u[1]) if shared else max(length[r] for r in units)

    batches.sort(key=lambda b: -batch_length(b))
    results = [0.0] * len(inputs)

    yield PhaseStarted(phase, total=len(batches))
    device = model_device(model)
    pad_id = pad_token_id(tokenizer)
    options = _forward_options(model)
    window = _sliding_window(model)
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    try:
        for b, (is_shared, units) in enumerate(batches):
            if should_stop():
                raise Cancelled()
            with torch.inference_mode():
                done = False
                if is_shared and cache_arg is not None:
                    # Cache positions run to the first width plus the second: inside the window.
                    w1 = max(shared for shared, _ in units)
                    w2 = max(length[r] - shared for shared, members in units for r in members)
                    if window is None or w1 + w2 < window:
                        done = _score_shared(model, rows, units, results, pad_id, device, cache_arg, batch_size)
                        if not done:
                            cache_arg = None  # this model's cache cannot be expanded: plain from now on
                if not done:
                    flat = [r for _shared, members in units for r in members] if is_shared else units
                    for k in range(0, len(flat), batch_size):
                        _score_flat(model, rows, flat[k : k + batch_size], results, pad_id, device, options, batch_size)
            yield PhaseProgress(phase, done=b + 1, total=len(batches), detail=f"{len(inputs)} requests")
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    yield PhaseDone(phase, seconds=time.perf_counter() - started)
    return results


def loglikelihoods(
    model: Any,
    tokenizer: Any,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 16,
    should_stop: Callable[[], bool] = lambda: False,
    max_length: int | None = None,
    groups: Sequence[Hashable] | None = None,
) -> list[float]:
    """:func:`iter_loglikelihoods` without the events."""
    return run_to_completion(
        iter_loglikelihoods(model, tokenizer, requests, batch_size, should_stop, max_length, groups=groups)
    )
