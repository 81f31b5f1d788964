"""The sampling loop of self-generation: batched decoding with a KV cache, HF-equivalent logits
processing, per-sample random streams (inverse-CDF sampling), and each sample's perplexity
accumulated while it is written.

What a decoding step costs besides the model's forward (``bench/selfgen_throughput.py``): the KV
cache is written in place into buffers sized for the whole sample (:func:`_preallocate`; a growing
cache copies itself every step), the repetition penalty and the suppressed tokens touch only the
seen and suppressed entries of the vocabulary (:func:`_candidates_from_history`, bit-identical to
the whole-vocabulary :func:`_candidates`), and the NLL of the drawn token is its logit less the
log-sum-exp of the row. With stop tokens (the paper's protocol), rows that are done leave the batch
with their cache rows (:func:`_compacting`: 0.54x the time of a paper-protocol set on the demo
model, the same windows). The tokens drawn for a seed are those of the loop before these changes
(``tests/core/test_selfgen_decoding.py`` keeps that loop as its reference).

Part of :mod:`prunestudio.core.calib.selfgen` (Ji et al., ICLR 2025); see its package docstring.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, Callable, Generator, Iterable, NamedTuple, Sequence

import torch

from ...errors import CalibrationError, Cancelled
from ...events import run_to_completion
from ...model import memory
from ...model.attention import decode_attention
from ...model.devices import model_device
from .prompts import _suppress_mask
from .settings import GenerationSettings

__all__ = ["sample_tokens", "iter_sample_tokens", "fitting_batch", "DecodeStep"]

# Progress inside a batch of decoding: at most this often (seconds).
_STEP_PROGRESS_SECONDS = 0.5


class DecodeStep(NamedTuple):
    """What :func:`iter_sample_tokens` yields after a decoding step: steps done and in all, and
    the generated tokens so far (``[batch, done]``, a view valid until the next step)."""

    done: int
    total: int
    generated: torch.Tensor


def _sample_seed(seed: int, index: int) -> int:
    digest = hashlib.sha256(f"prunestudio-selfgen:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _sample_uniforms(seeds: Sequence[int], length: int) -> torch.Tensor:
    """``[B, length]`` float64 uniforms in [0, 1), row ``b`` from its own generator seeded ``seeds[b]``."""
    rows = []
    for s in seeds:
        g = torch.Generator(device="cpu")
        g.manual_seed(int(s))
        rows.append(torch.rand(length, generator=g, dtype=torch.float64))
    return torch.stack(rows) if rows else torch.empty(0, length, dtype=torch.float64)


def _candidates(
    logits: torch.Tensor,
    seen: torch.Tensor,
    suppress: torch.Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampling distribution of one step, as HF's sampling processors compute it.

    ``logits`` [B, V] float32 raw; ``seen`` [B, V] bool (tokens in the sequence so far);
    ``suppress`` [V] bool. Returns ``(ids, probs)`` [B, C]: candidate token ids, most likely
    first, and their probabilities (zero for the ones top-p removed; rows sum to 1).

    Order as in transformers: repetition penalty (CTRL: logits of seen tokens divided by the
    penalty when positive, multiplied when negative), suppressed tokens to -inf, temperature,
    top-k, top-p (a token is kept while the probability mass of the tokens ranked above it is
    below ``top_p``; the most likely token is always kept). Top-k keeps exactly ``k`` candidates
    (HF also keeps exact ties with the k-th logit; with float logits that has measure zero).

    The definition, on whole-vocabulary masks; the decoding loop computes the same numbers with
    :func:`_candidates_from_history`, which touches the vocabulary fewer times.
    """
    if repetition_penalty != 1.0:
        penalized = torch.where(logits < 0, logits * repetition_penalty, logits / repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    logits = logits.masked_fill(suppress, float("-inf"))
    if temperature != 1.0:
        logits = logits / temperature
    return _top_k_top_p(logits, top_k, top_p)


def _top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k, softmax and top-p of already penalized, suppressed and tempered logits (see
    :func:`_candidates`)."""
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        vals, idx = torch.topk(logits, top_k, dim=-1)  # sorted, descending
    else:
        vals, idx = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(vals, dim=-1)
    if top_p < 1.0:
        mass_above = torch.cumsum(probs, dim=-1) - probs
        keep = mass_above < top_p
        keep[:, 0] = True
        probs = probs * keep
        probs = probs / probs.sum(-1, keepdim=True)
    return idx, probs


def _candidates_from_history(
    logits: torch.Tensor,
    history: torch.Tensor,
    suppress_ids: torch.Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_candidates` bit for bit, with the seen tokens as ``history`` [B, T] (token ids,
    repeats allowed) and the suppressed ones as ``suppress_ids`` [S] (ids); changes ``logits`` in
    place.

    The repetition penalty is applied to the (at most T) seen logits by gather and scatter instead
    of two passes over the vocabulary, and suppression writes S entries; every value comes out of
    the same float operation as in :func:`_candidates` (``x * p`` or ``x / p``, ``-inf``, ``x / t``),
    so top-k sees the same bits and picks the same candidates in the same order.
    """
    if repetition_penalty != 1.0 and history.shape[-1]:
        v = logits.gather(1, history)
        logits.scatter_(1, history, torch.where(v < 0, v * repetition_penalty, v / repetition_penalty))
    if suppress_ids.numel():
        logits.index_fill_(1, suppress_ids, float("-inf"))
    if temperature != 1.0:
        logits.div_(temperature)
    return _top_k_top_p(logits, top_k, top_p)


def _inverse_cdf(idx: torch.Tensor, probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Draw one candidate per row: the first whose cumulative probability exceeds ``u`` [B].

    The chosen candidate always has a positive probability (``right=True`` skips zero-mass ones).
    """
    wide = torch.float32 if probs.device.type == "mps" else torch.float64  # MPS has no float64
    cdf = torch.cumsum(probs.to(wide), dim=-1)
    target = (u.to(cdf.device, wide) * cdf[:, -1]).unsqueeze(-1)
    j = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)
    return idx.gather(1, j).squeeze(1)


def _stop_mask(stop_ids: Iterable[int], vocab: int, device: torch.device) -> torch.Tensor | None:
    """``[vocab]`` bool mask of the tokens that end a sample, or None when there are none."""
    ids = [int(i) for i in stop_ids if 0 <= int(i) < vocab]
    if not ids:
        return None
    mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    mask[torch.tensor(ids, dtype=torch.long, device=device)] = True
    return mask


def _cut_at_stop(tokens: list[int], start: int, stop_set: set[int]) -> list[int]:
    """``tokens`` up to and including the first stop token at or after ``start`` (the prompt is
    never cut); all of them when there is none."""
    for j in range(start, len(tokens)):
        if tokens[j] in stop_set:
            return tokens[: j + 1]
    return tokens


def _cache_kwarg(model: Any) -> str:
    """The forward() argument that takes the KV cache: ``cache`` (transformers >= 5.2x) or the
    older ``past_key_values`` (still accepted, with a deprecation warning, until 5.40)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _output_cache(out: Any) -> Any:
    if isinstance(out, dict) and out.get("cache") is not None:  # ModelOutput is a dict
        return out["cache"]
    return getattr(out, "past_key_values", None)


@functools.lru_cache(maxsize=1)
def _in_place_layer_class() -> type | None:
    """A transformers ``DynamicLayer`` that keeps its keys and values in buffers allocated once for
    the whole sample instead of concatenating every step (``torch.cat`` copies the whole cache of
    every block at every step: at 512 tokens, more memory traffic than the weights). None when
    this transformers has no ``DynamicLayer``."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None

    class _InPlaceLayer(DynamicLayer):  # type: ignore[misc, valid-type]
        """Keys and values of ``[batch, heads, capacity, dim]`` buffers; ``keys``/``values`` are
        views of the filled part, so everything that reads a ``DynamicLayer`` reads the same thing."""

        def __init__(self, layer: Any, capacity: int) -> None:
            super().__init__()
            n = layer.keys.shape[-2]
            self.device = layer.keys.device
            self._kbuf = layer.keys.new_empty((*layer.keys.shape[:-2], capacity, layer.keys.shape[-1]))
            self._vbuf = layer.values.new_empty((*layer.values.shape[:-2], capacity, layer.values.shape[-1]))
            self._kbuf[..., :n, :].copy_(layer.keys)
            self._vbuf[..., :n, :].copy_(layer.values)
            self._filled = n
            self.keys, self.values = self._kbuf[..., :n, :], self._vbuf[..., :n, :]
            self.is_initialized = True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            n, end = self._filled, self._filled + key_states.shape[-2]
            if end > self._kbuf.shape[-2]:  # past the capacity (never in the decoding loop): grow
                return super().update(key_states, value_states, *args, **kwargs)
            self._kbuf[..., n:end, :].copy_(key_states)
            self._vbuf[..., n:end, :].copy_(value_states)
            self._filled = end
            self.keys, self.values = self._kbuf[..., :end, :], self._vbuf[..., :end, :]
            return self.keys, self.values

        def reorder_cache(self, beam_idx: torch.Tensor) -> None:
            """Keep (and reorder) the rows ``beam_idx`` of the buffers: rows that are done leave."""
            idx = beam_idx.to(self._kbuf.device)
            self._kbuf, self._vbuf = self._kbuf.index_select(0, idx), self._vbuf.index_select(0, idx)
            n = self._filled
            self.keys, self.values = self._kbuf[..., :n, :], self._vbuf[..., :n, :]

    return _InPlaceLayer


def _preallocate(past: Any, capacity: int) -> Any:
    """``past`` with each of its plain growing layers (full attention; not sliding-window, quantized
    or linear-attention ones) swapped for one whose buffers hold ``capacity`` tokens; the others,
    and caches of another kind, are left as they are. The keys and values read are the same."""
    layers = getattr(past, "layers", None)
    cls = _in_place_layer_class()
    if cls is None or not isinstance(layers, list):
        return past
    base = cls.__mro__[1]
    for i, layer in enumerate(layers):
        keys = getattr(layer, "keys", None)
        if type(layer) is base and getattr(layer, "is_initialized", False) and isinstance(keys, torch.Tensor) \
                and keys.dim() == 4 and keys.shape[-2] < capacity:
            layers[i] = cls(layer, capacity)
    return past


def _compactable(past: Any) -> bool:
    """Whether rows can leave ``past`` (``Cache.reorder_cache`` with fewer indices): a cache made
    of layers that grow with the sequence (full or sliding attention, in place or not, and the
    state layers of linear attention), not of fixed-size static buffers or of an unknown kind."""
    layers = getattr(past, "layers", None)
    if not isinstance(layers, list) or not callable(getattr(past, "reorder_cache", None)):
        return False
    try:
        from transformers import cache_utils as cu
    except ImportError:
        return False
    growing = tuple(c for c in (getattr(cu, "DynamicLayer", None), getattr(cu, "LinearAttentionLayer", None),
                                getattr(cu, "DummyLayer", None)) if c is not None)
    static = getattr(cu, "StaticLayer", None)
    return bool(growing) and all(isinstance(layer, growing) and not (static and isinstance(layer, static))
                                 for layer in layers)


_COMPACT_FRACTION = 0.25


def _compacting(done: torch.Tensor) -> bool:
    """Drop the rows that are done when they are at least a quarter of the batch: each step then
    computes at most a third more rows than are still being written, and each drop (a copy of the
    remaining rows' cache) is paid for by the steps after it. ``bench/selfgen_paper.py`` measures it."""
    return int(done.sum()) >= max(1, int(_COMPACT_FRACTION * done.numel()))


def fitting_batch(model: Any, requested: int, seqlen: int, vocab: int) -> int:
    """The largest batch up to ``requested`` whose decoding state (KV cache of ``seqlen`` tokens
    per sequence, plus a few vocabulary-wide rows) takes at most a quarter of the memory free on
    the model's device now; ``requested`` when the model's config does not describe its cache."""
    device = model_device(model)
    try:
        dtype_bytes = next(model.parameters()).element_size()
    except StopIteration:
        return requested
    per_token = memory.kv_cache_bytes_per_token(getattr(model, "config", None), dtype_bytes)
    if per_token is None:
        return requested
    free = memory.available_memory(str(device))
    room = free["device_free"] if device.type == "cuda" else free["host_available"]
    if not room:
        return requested
    per_sequence = per_token * seqlen + 4 * vocab * 4  # logits, log-softmax, repetition marks
    return max(1, min(requested, (room // 4) // per_sequence))


def sample_tokens(*args: Any, **kwargs: Any) -> tuple[list[list[int]], list[float]]:
    """:func:`iter_sample_tokens` (same arguments) run to the end: the token lists and perplexities."""
    return run_to_completion(iter_sample_tokens(*args, **kwargs))


def iter_sample_tokens(
    model: Any,
    prompts: Sequence[Sequence[int]],
    length: int,
    settings: GenerationSettings,
    sample_seeds: Sequence[int],
    suppress: torch.Tensor | Iterable[int] = (),
    pad_id: int = 0,
    should_stop: Callable[[], bool] = lambda: False,
    stop_ids: Iterable[int] = (),
) -> Generator[DecodeStep, None, tuple[list[list[int]], list[float]]]:
    """Continue each prompt by sampling until it is ``length`` tokens long; one batched pass.

    A generator: yields a :class:`DecodeStep` after every decoding step but the last, so that a
    caller can show progress (and text) inside a batch, and returns ``(tokens, perplexities)``.

    Prompts may have different lengths (they are left-padded with an attention mask and explicit
    ``position_ids``, so a row's result is what it would be alone). Row ``b`` draws its randomness
    from ``sample_seeds[b]`` only. Returns the token lists (prompt included, exactly ``length``
    tokens) and each row's perplexity under the model's raw distribution (exp of the mean NLL of
    tokens 1..length-1). Raises :class:`Cancelled` between decoding steps when ``should_stop()``.

    ``stop_ids`` (end-of-text tokens; the paper's protocol): a row that samples one of them ends
    there. Its token list ends with that stop token (so it is shorter than ``length``), its
    perplexity leaves the stop token out (the text's perplexity), and decoding ends as soon as
    every row has ended. Without stop ids every row is exactly ``length`` tokens long.
    """
    bsz = len(prompts)
    if bsz == 0:
        return [], []
    if len(sample_seeds) != bsz:
        raise ValueError("one seed per prompt is required")
    lens = [len(p) for p in prompts]
    if min(lens) < 1:
        raise CalibrationError("Every prompt needs at least one token to generate from.")
    if max(lens) > length:
        raise CalibrationError(f"A prompt is longer ({max(lens)} tokens) than the sample length ({length}).")
    device = model_device(model)
    plen = max(lens)
    steps = length - min(lens)  # decoding steps (rows with longer prompts finish early)
    need = torch.tensor([length - n for n in lens], device=device)

    ids = torch.full((bsz, plen), int(pad_id), dtype=torch.long)
    mask = torch.zeros((bsz, plen), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, plen - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[b, plen - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    position_ids = (mask.cumsum(-1) - 1).clamp_(min=0)
    wide = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    uniforms = _sample_uniforms(sample_seeds, max(steps, 1)).to(device, wide)

    model.eval()
    # decode_attention: one token at a time, the CPU's fast kernel for grouped heads (see its module)
    with torch.inference_mode(), decode_attention(model):
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True)
        logits = out.logits.float()  # [B, P, V]; prompts are short
        vocab = logits.shape[-1]
        if isinstance(suppress, torch.Tensor):
            sup = suppress.to(device)
        else:
            sup = _suppress_mask(vocab, suppress, None, device)
        if sup.numel() != vocab:
            raise CalibrationError(f"Suppressed-token mask has {sup.numel()} entries, the model {vocab}.")

        # Repetition penalty applies to every real prompt token (as HF does), never to padding:
        # each row's history is its prompt tokens (padding replaced by the row's last prompt token,
        # a repeat changes nothing) and then every token drawn for it, the ones drawn after the
        # row is complete included, as the whole-vocabulary mask of :func:`_candidates` had them.
        history = torch.empty((bsz, plen + steps), dtype=torch.long, device=device)
        history[:, :plen] = torch.where(mask.bool(), ids, ids[:, -1:])
        sup_ids = torch.nonzero(sup.flatten()).flatten()

        # NLL of prompt tokens 1.. (predicted from the prompt's earlier tokens).
        nll = torch.zeros(bsz, dtype=wide, device=device)
        count = torch.zeros(bsz, dtype=torch.long, device=device)
        if plen > 1:
            lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            valid = (mask[:, :-1] * mask[:, 1:]).bool()
            nll -= torch.where(valid, lp, 0.0).sum(-1).to(wide)
            count += valid.sum(-1)
        next_logits = logits[:, -1]
        del logits
        cache_kw = _cache_kwarg(model)
        past = _preallocate(_output_cache(out), plen + steps)
        full_mask = torch.cat([mask, mask.new_ones((bsz, steps))], dim=-1)
        positions = position_ids[:, -1:] + torch.arange(1, steps + 1, device=device)  # [B, steps]

        gen = torch.full((bsz, steps), int(pad_id), dtype=torch.long, device=device)  # every row's tokens
        stops = _stop_mask(stop_ids, vocab, device)
        ended = torch.zeros(bsz, dtype=torch.bool, device=device)
        active_steps = (torch.arange(steps, device=device)[None, :] < need[:, None])  # [B, steps]
        # The rows still decoding (their indices into the batch): with stop tokens, rows that are
        # done leave the batch (their cache too) once they are a quarter of it (:func:`_compacting`).
        rows = torch.arange(bsz, device=device)
        nll_all, count_all = nll.clone(), count.clone()  # every row's, written back when rows leave
        compact = stops is not None and _compactable(past)
        last = steps - 1
        for s in range(steps):
            if should_stop():
                raise Cancelled()
            # log p(token) = logit - logsumexp(logits), from the raw logits before they are processed
            lse = torch.logsumexp(next_logits, dim=-1)
            cand, probs = _candidates_from_history(
                next_logits.clone(), history[:, : plen + s], sup_ids,
                settings.temperature, settings.top_k, settings.top_p, settings.repetition_penalty,
            )
            tok = _inverse_cdf(cand, probs, uniforms[:, s])
            active = active_steps[:, s]
            if stops is not None:  # a row that ended writes nothing more; the stop token not scored
                active = active & ~ended
                stopping = active & stops[tok]
                ended |= stopping
                active = active & ~stopping
            lp = next_logits.gather(1, tok[:, None]).squeeze(1) - lse
            nll -= torch.where(active, lp, 0.0).to(wide)
            count += active.long()
            history[:, plen + s] = tok
            gen[rows, s] = tok
            if s == steps - 1:
                break
            if stops is not None:
                done = ended | (need <= s + 1)
                if bool(done.all()):
                    last = s
                    break
                if compact and _compacting(done):
                    nll_all[rows], count_all[rows] = nll, count
                    keep = torch.nonzero(~done).flatten()
                    past.reorder_cache(keep)
                    rows, tok = rows[keep], tok[keep]
                    history, uniforms, full_mask, positions = (
                        history[keep], uniforms[keep], full_mask[keep], positions[keep])
                    active_steps, need, ended, nll, count = (
                        active_steps[keep], need[keep], ended[keep], nll[keep], count[keep])
            yield DecodeStep(s + 1, steps, gen[:, : s + 1])
            out = model(
                input_ids=tok[:, None], attention_mask=full_mask[:, : plen + s + 1],
                position_ids=positions[:, s : s + 1], use_cache=True, **{cache_kw: past},
            )
            past = _output_cache(out)
            next_logits = out.logits[:, -1].float()
        del past
        nll_all[rows], count_all[rows] = nll, count
        nll, count = nll_all, count_all

    gen_list = gen[:, : last + 1].tolist()
    tokens = [list(map(int, p)) + gen_list[b][: length - len(p)] for b, p in enumerate(prompts)]
    if stops is not None:
        stop_set = {int(i) for i in torch.nonzero(stops).flatten().tolist()}
        tokens = [_cut_at_stop(t, len(p), stop_set) for t, p in zip(tokens, prompts)]
    ppl = torch.exp(nll / count.clamp(min=1).to(wide)).tolist()
    return tokens, [float(x) for x in ppl]
