"""Self-generated calibration data (Ji et al., ICLR 2025, "Beware of Calibration Data for Pruning LLMs").

The model writes its own calibration text. Each sample starts with the model's document start
(:func:`document_start`) followed by a short prefix (the first ``prefix_tokens`` tokens of a
source text; in zero-data mode, the product's default, no prefix at all), the model continues it
by sampling (temperature 0.6, top-p 0.95, top-k 50, repetition penalty 1.2) up to exactly
``seqlen`` tokens, and the ``drop_top`` fraction of samples with the highest perplexity under the
model is filtered out (``floor(n * drop_top)`` samples). The rest is what the pruner calibrates on.

Everything here is Qt-free. :func:`iter_generate` is a generator of :mod:`events` (the GUI shows
the text being written, and each sample's text as soon as its batch is done) that returns the
:class:`CalibrationSet`; :func:`generate_calibration_set` drains it.

Design notes
------------
* The sampling loop is our own (not ``model.generate``): left-padded prompts with an attention
  mask and explicit ``position_ids``, the KV cache (``use_cache=True``; the cache is passed back
  as ``cache=``, or ``past_key_values=`` on models whose forward() still uses that name),
  HF-equivalent logits processing (repetition penalty, temperature, top-k, then top-p), and a
  cancel check between decoding steps.
* Randomness is per *sample*, not per batch: sample ``i`` draws its uniforms from a
  ``torch.Generator`` seeded with a hash of ``(seed, i)`` and picks each token by inverse-CDF
  sampling. A sample therefore does not depend on the batch size, on its neighbours in the batch
  or on timing; only on the seed, its index and its prefix (up to float rounding of batched
  matmuls).
* The per-sample perplexity is accumulated inside the decoding loop from the model's raw
  (unprocessed) next-token distribution, so filtering costs no second forward pass. It equals
  :func:`sample_perplexities` (a plain full forward) up to float rounding.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Generator, Iterable, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from ..errors import CalibrationError, Cancelled, ConfigError
from ..events import Event, PhaseDone, PhaseProgress, PhaseStarted, run_to_completion
from ..prune import memory
from .calibset import CalibrationSet, CalibSample, tokenizer_fingerprint

__all__ = [
    "GenerationSettings",
    "SampleGenerated",
    "SampleInProgress",
    "FilteringDone",
    "iter_generate",
    "generate_calibration_set",
    "sample_perplexities",
    "sample_tokens",
    "iter_sample_tokens",
    "start_token",
    "document_start",
    "suppressed_token_ids",
    "prefixes_from_texts",
]

# How many eligible source texts (per requested sample) are read to choose prefixes from. The
# source may be a huge or streamed corpus: only the first ``PREFIX_POOL_FACTOR * n`` texts long
# enough to give a prefix are read, and the seed picks ``n`` of them.
PREFIX_POOL_FACTOR = 4

# Upper bound on the float32 logits (and their log-softmax) held at once by the scoring passes.
_LOGITS_BUDGET_BYTES = 512 * 2**20

# Progress inside a batch of decoding: at most this often (seconds).
_STEP_PROGRESS_SECONDS = 0.5


# ------------------------------------------------------------------------------------------------
# settings and events
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationSettings:
    """Everything that determines a self-generated set (besides the model and the prefix texts)."""

    n: int = 128  # samples generated (before filtering)
    seqlen: int = 512  # tokens per sample, prefix and start token included
    prefix_tokens: int = 2  # tokens taken from each source text (prefix mode)
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 50  # 0 disables top-k
    repetition_penalty: float = 1.2  # 1.0 disables it
    drop_top: float = 0.2  # fraction of samples with the highest perplexity that is dropped
    # Sequences decoded together. Decoding reads every weight once per step whatever the batch, so
    # larger batches give more tokens per weight read: on the 2-core CPU, 83 tokens/s at 8, 184 at
    # 32 (``bench/selfgen_throughput.py``). Lowered at run time when the KV cache would not fit.
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(msg)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.n) or self.n <= 0:
            bad(f"The number of samples to generate must be a positive whole number (got {self.n!r}).")
        if not is_int(self.prefix_tokens) or self.prefix_tokens < 0:
            bad(f"The prefix length must be zero or more tokens (got {self.prefix_tokens!r}).")
        if not is_int(self.seqlen) or self.seqlen <= self.prefix_tokens or self.seqlen < 2:
            bad(
                f"The sample length ({self.seqlen!r} tokens) must be a whole number larger than the "
                f"prefix length ({self.prefix_tokens!r} tokens) and at least 2."
            )
        if not is_num(self.temperature) or self.temperature <= 0:
            bad(f"The temperature must be a number above 0 (got {self.temperature!r}).")
        if not is_num(self.top_p) or not (0 < self.top_p <= 1):
            bad(f"Top-p must be above 0 and at most 1 (got {self.top_p!r}).")
        if not is_int(self.top_k) or self.top_k < 0:
            bad(f"Top-k must be a whole number, 0 to disable it (got {self.top_k!r}).")
        if not is_num(self.repetition_penalty) or self.repetition_penalty <= 0:
            bad(f"The repetition penalty must be a number above 0, 1 to disable it (got {self.repetition_penalty!r}).")
        if not is_num(self.drop_top) or not (0 <= self.drop_top < 1):
            bad(f"The fraction of samples to drop must be at least 0 and below 1 (got {self.drop_top!r}).")
        if not is_int(self.batch_size) or self.batch_size <= 0:
            bad(f"The batch size must be a positive whole number (got {self.batch_size!r}).")
        if not is_int(self.seed):
            bad(f"The seed must be a whole number (got {self.seed!r}).")

    @property
    def num_dropped(self) -> int:
        """How many samples filtering drops: ``floor(n * drop_top)``.

        Floor, not round: the user asked to drop *at most* that fraction, and with small ``n`` a
        round-up would drop more than asked (n=3, 20% -> 1 of 3 would be 33%). The small epsilon
        keeps 0.3 * 10 (= 2.9999999999999996 in floats) from becoming 2.
        """
        return int(math.floor(self.n * self.drop_top + 1e-9))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


class DecodeStep(NamedTuple):
    """What :func:`iter_sample_tokens` yields after a decoding step: steps done and in all, and
    the generated tokens so far (``[batch, done]``, a view valid until the next step)."""

    done: int
    total: int
    generated: torch.Tensor


@dataclass(frozen=True)
class FilteringDone(Event):
    """Perplexity filtering finished: the indices dropped and the highest perplexity kept."""

    dropped: tuple[int, ...]
    threshold: float


# ------------------------------------------------------------------------------------------------
# tokens: start token, suppressed tokens, prefixes
# ------------------------------------------------------------------------------------------------
def _tokenizer_adds_bos(tokenizer: Any) -> bool:
    """True if encoding text (with special tokens) puts the BOS token first, as Llama's does."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    try:
        ids = tokenizer("Hello world", add_special_tokens=True)["input_ids"]
    except Exception:  # noqa: BLE001 - an exotic tokenizer: assume it doesn't
        return False
    return len(ids) > 0 and ids[0] == bos


def start_token(tokenizer: Any) -> tuple[int, str]:
    """The token a zero-data sample starts from, and why it was chosen.

    The rule: start where the model saw documents start during pre-training.

    1. If the tokenizer puts a BOS token in front of every text it encodes (Llama, Mistral, Gemma,
       OPT, Llama 3's ``<|begin_of_text|>``), the model was trained with it: use BOS.
    2. Otherwise models were trained on documents joined by an end-of-text separator, so the
       token after a separator is a document start. Use a token spelled ``<|endoftext|>`` if the
       vocabulary has one (GPT-2, Qwen2, SmolLM2: instruct tokenizers declare the chat-template
       token ``<|im_start|>`` as BOS, and starting from it makes the model write chat-template
       junk such as ``system\\n...`` instead of its own natural text).
    3. Else the EOS token (the separator, e.g. ``</s>``), else BOS.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and _tokenizer_adds_bos(tokenizer):
        return int(bos), "bos"
    try:
        eot = tokenizer.get_vocab().get("<|endoftext|>")
    except Exception:  # noqa: BLE001
        eot = None
    if isinstance(eot, int) and eot >= 0:
        return int(eot), "endoftext"
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        return int(eos), "eos"
    if bos is not None:
        return int(bos), "bos"
    raise CalibrationError(
        "The tokenizer has no beginning- or end-of-text token to start self-generation from.",
        hint="Use a prefix source (texts whose first tokens start each sample) instead.",
    )


# A generic end of a previous document, put before a separator-style start token (see
# :func:`document_start`). Punctuation and a paragraph break: no content, no data.
LEAD_IN_TEXT = ".\n\n"


def document_start(tokenizer: Any) -> tuple[list[int], str]:
    """The tokens every sample starts with: where a new document starts in pre-training.

    * BOS-trained models (the tokenizer adds BOS by itself): ``[BOS]``, as in Ji et al.
    * Separator-trained models (GPT-2, Qwen2, SmolLM2): in their packed pre-training streams a
      document start is the end of the previous document, the ``<|endoftext|>`` separator, then the
      new text. A separator alone at position 0 is not such a context: position 0 of a training
      window was an arbitrary token, and models learn little there (SmolLM2-135M predicts "-"
      with 40% after a lone ``<|endoftext|>`` and writes code-like junk from it). So the start is
      ``LEAD_IN_TEXT`` (".\n\n", the end of a generic previous document) + separator, which
      gives the model's own document openings (titles, prose). Lead-in tokens the vocabulary
      lacks (unknown or special tokens) are left out.

    Returns ``(token ids, rule)`` with rule ``"bos"``, ``"endoftext"`` or ``"eos"`` (see
    :func:`start_token`).
    """
    start, rule = start_token(tokenizer)
    if rule == "bos":
        return [start], rule
    try:
        lead = [int(t) for t in tokenizer(LEAD_IN_TEXT, add_special_tokens=False)["input_ids"]]
    except Exception:  # noqa: BLE001
        lead = []
    bad = set(_as_id_list(getattr(tokenizer, "unk_token_id", None)))
    try:
        bad.update(int(i) for i in tokenizer.all_special_ids)
    except Exception:  # noqa: BLE001
        pass
    return [t for t in lead if t not in bad] + [start], rule


def _as_id_list(v: Any) -> list[int]:
    if v is None:
        return []
    if isinstance(v, (list, tuple, set)):
        return [int(x) for x in v if x is not None]
    if isinstance(v, torch.Tensor):
        return [int(x) for x in v.flatten().tolist()]
    return [int(v)]


def suppressed_token_ids(model: Any, tokenizer: Any, start: int | None = None) -> list[int]:
    """Token ids that are never sampled: EOS / padding / BOS / the start token / special tokens.

    Forbidding them is what makes every sample a full ``seqlen`` window of running text: the
    paper's samples are continuations of the same length as dataset windows, and the pruner needs
    equal-length windows. An EOS would end the sample early (leaving a short or padded window),
    and a control token in the middle would start a fresh document or, for instruct models, a chat
    turn. Vocabulary rows beyond the tokenizer's vocabulary (padding rows of the embedding matrix)
    are suppressed too, in :func:`_suppress_mask`.
    """
    ids: set[int] = set()
    for attr in ("eos_token_id", "pad_token_id", "bos_token_id"):
        ids.update(_as_id_list(getattr(tokenizer, attr, None)))
    for cfg in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        if cfg is None:
            continue
        for attr in ("eos_token_id", "pad_token_id", "bos_token_id"):
            ids.update(_as_id_list(getattr(cfg, attr, None)))
    try:
        ids.update(int(i) for i in tokenizer.all_special_ids)
    except Exception:  # noqa: BLE001
        pass
    if start is not None:
        ids.add(int(start))
    return sorted(i for i in ids if i >= 0)


def _suppress_mask(vocab_size: int, suppress: Iterable[int], tokenizer_len: int | None, device: torch.device) -> torch.Tensor:
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for i in suppress:
        if 0 <= i < vocab_size:
            mask[i] = True
    if tokenizer_len is not None and 0 < tokenizer_len < vocab_size:
        mask[tokenizer_len:] = True
    if int(mask.sum()) >= vocab_size:
        raise CalibrationError("Every token of the vocabulary is a special token; nothing can be generated.")
    return mask.to(device)


def _first_tokens(tokenizer: Any, text: str, k: int) -> list[int] | None:
    """The first ``k`` tokens of ``text`` (no special tokens), or None if it is shorter."""
    head = text[: 64 * k + 256]
    ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    if len(ids) <= k and len(head) < len(text):
        # The slice cut the k-th token (or the text has long runs): encode the whole text.
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < k:
        return None
    return [int(t) for t in ids[:k]]


def prefixes_from_texts(tokenizer: Any, texts: Iterable[str], k: int, n: int, seed: int) -> list[list[int]]:
    """``n`` prefixes of ``k`` tokens chosen deterministically with ``seed`` from ``texts``.

    Texts shorter than ``k`` tokens (and empty ones) are skipped. Only the first
    ``PREFIX_POOL_FACTOR * n`` eligible texts are read; ``n`` distinct ones are drawn from them
    with ``random.Random(seed)``. If there are fewer than ``n``, the pool is shuffled and cycled.
    """
    pool: list[list[int]] = []
    limit = PREFIX_POOL_FACTOR * n
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            continue
        ids = _first_tokens(tokenizer, text, k)
        if ids is None:
            continue
        pool.append(ids)
        if len(pool) >= limit:
            break
    if not pool:
        raise CalibrationError(
            f"No source text is at least {k} tokens long, so no prefixes could be taken from it.",
            hint="Pick another prefix source, or generate without data.",
        )
    rng = random.Random(seed)
    if len(pool) >= n:
        order = rng.sample(range(len(pool)), n)
    else:
        perm = list(range(len(pool)))
        rng.shuffle(perm)
        order = [perm[i % len(perm)] for i in range(n)]
    return [list(pool[i]) for i in order]


# ------------------------------------------------------------------------------------------------
# the sampling loop
# ------------------------------------------------------------------------------------------------
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
    """
    if repetition_penalty != 1.0:
        penalized = torch.where(logits < 0, logits * repetition_penalty, logits / repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    logits = logits.masked_fill(suppress, float("-inf"))
    if temperature != 1.0:
        logits = logits / temperature
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


def _inverse_cdf(idx: torch.Tensor, probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Draw one candidate per row: the first whose cumulative probability exceeds ``u`` [B].

    The chosen candidate always has a positive probability (``right=True`` skips zero-mass ones).
    """
    wide = torch.float32 if probs.device.type == "mps" else torch.float64  # MPS has no float64
    cdf = torch.cumsum(probs.to(wide), dim=-1)
    target = (u.to(cdf.device, wide) * cdf[:, -1]).unsqueeze(-1)
    j = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)
    return idx.gather(1, j).squeeze(1)


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


def fitting_batch(model: Any, requested: int, seqlen: int, vocab: int) -> int:
    """The largest batch up to ``requested`` whose decoding state (KV cache of ``seqlen`` tokens
    per sequence, plus a few vocabulary-wide rows) takes at most a quarter of the memory free on
    the model's device now; ``requested`` when the model's config does not describe its cache."""
    device = _model_device(model)
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


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


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
) -> Generator[DecodeStep, None, tuple[list[list[int]], list[float]]]:
    """Continue each prompt by sampling until it is ``length`` tokens long; one batched pass.

    A generator: yields a :class:`DecodeStep` after every decoding step but the last, so that a
    caller can show progress (and text) inside a batch, and returns ``(tokens, perplexities)``.

    Prompts may have different lengths (they are left-padded with an attention mask and explicit
    ``position_ids``, so a row's result is what it would be alone). Row ``b`` draws its randomness
    from ``sample_seeds[b]`` only. Returns the token lists (prompt included, exactly ``length``
    tokens) and each row's perplexity under the model's raw distribution (exp of the mean NLL of
    tokens 1..length-1). Raises :class:`Cancelled` between decoding steps when ``should_stop()``.
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
    device = _model_device(model)
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
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True)
        logits = out.logits.float()  # [B, P, V]; prompts are short
        vocab = logits.shape[-1]
        if isinstance(suppress, torch.Tensor):
            sup = suppress.to(device)
        else:
            sup = _suppress_mask(vocab, suppress, None, device)
        if sup.numel() != vocab:
            raise CalibrationError(f"Suppressed-token mask has {sup.numel()} entries, the model {vocab}.")

        # Repetition penalty applies to every real prompt token (as HF does), never to padding.
        seen = torch.zeros((bsz, vocab), dtype=torch.float32, device=device)
        seen.scatter_add_(1, ids, mask.float())
        seen = seen > 0

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
        past = _output_cache(out)

        gen = torch.empty((bsz, steps), dtype=torch.long, device=device)
        rows = torch.arange(bsz, device=device)
        for s in range(steps):
            if should_stop():
                raise Cancelled()
            cand, probs = _candidates(
                next_logits, seen, sup,
                settings.temperature, settings.top_k, settings.top_p, settings.repetition_penalty,
            )
            tok = _inverse_cdf(cand, probs, uniforms[:, s])
            active = s < need
            lp = torch.log_softmax(next_logits, dim=-1)[rows, tok]
            nll -= torch.where(active, lp, 0.0).to(wide)
            count += active.long()
            gen[:, s] = tok
            seen[rows, tok] = True
            if s == steps - 1:
                break
            yield DecodeStep(s + 1, steps, gen[:, : s + 1])
            mask = torch.cat([mask, mask.new_ones((bsz, 1))], dim=-1)
            position_ids = position_ids[:, -1:] + 1
            out = model(
                input_ids=tok[:, None], attention_mask=mask, position_ids=position_ids,
                use_cache=True, **{cache_kw: past},
            )
            past = _output_cache(out)
            next_logits = out.logits[:, -1].float()
        del past

    gen_list = gen.tolist()
    tokens = [list(map(int, p)) + gen_list[b][: length - len(p)] for b, p in enumerate(prompts)]
    ppl = torch.exp(nll / count.clamp(min=1).to(wide)).tolist()
    return tokens, [float(x) for x in ppl]


# ------------------------------------------------------------------------------------------------
# perplexity
# ------------------------------------------------------------------------------------------------
def _micro_batch(batch_size: int, seqlen: int, vocab: int, copies: int = 2) -> int:
    per_sample = max(1, seqlen * vocab * 4 * copies)
    return max(1, min(batch_size, _LOGITS_BUDGET_BYTES // per_sample))


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
    device = _model_device(model)
    vocab = int(getattr(model.config, "vocab_size", 0) or 50_000)
    mb = _micro_batch(batch_size, input_ids.shape[1], vocab)
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

    device = _model_device(model)
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
    nbatches = -(-st.n // batch)
    for b0 in range(0, st.n, batch):
        if should_stop():
            raise Cancelled()
        idx = list(range(b0, min(st.n, b0 + batch)))
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
                    detail=f"batch {b0 // batch + 1}/{nbatches}: token {step.done}/{step.total}, {rate:.0f} tokens/s",
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


def generate_calibration_set(
    model: Any,
    tokenizer: Any,
    settings: GenerationSettings,
    prefixes: Iterable[str] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    source_name: str | None = None,
) -> CalibrationSet:
    """:func:`iter_generate` without the events."""
    return run_to_completion(iter_generate(model, tokenizer, settings, prefixes, should_stop, source_name))
