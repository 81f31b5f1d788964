"""The start of every self-generated sample: the model's document start, the tokens it must never
sample (special tokens, padding rows of the vocabulary), and prefixes taken from a source text.

Part of :mod:`prunestudio.core.calib.selfgen` (Ji et al., ICLR 2025); see its package docstring.
"""

from __future__ import annotations

import random
from typing import Any, Iterable

import torch

from ...errors import CalibrationError

__all__ = ["start_token", "document_start", "suppressed_token_ids", "prefixes_from_texts", "LEAD_IN_TEXT",
           "PREFIX_POOL_FACTOR", "end_of_text_ids", "paper_prefix_pool"]

# How many eligible source texts (per requested sample) are read to choose prefixes from. The
# source may be a huge or streamed corpus: only the first ``PREFIX_POOL_FACTOR * n`` texts long
# enough to give a prefix are read, and the seed picks ``n`` of them.
PREFIX_POOL_FACTOR = 4


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


def end_of_text_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokens that end a document: the tokenizer's EOS, the EOS ids of the model's generation
    and model configs (instruct models often list several), and ``<|endoftext|>`` when the
    vocabulary has it (the document separator of GPT-2-style pre-training; an instruct model's
    EOS is its chat turn's end, such as SmolLM2's ``<|im_end|>``, not the end of a plain text).
    The paper's protocol lets the model sample them, and a sample ends there, as
    ``model.generate`` does at its EOS."""
    ids: set[int] = set(_as_id_list(getattr(tokenizer, "eos_token_id", None)))
    for cfg in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        if cfg is not None:
            ids.update(_as_id_list(getattr(cfg, "eos_token_id", None)))
    try:
        eot = tokenizer.get_vocab().get("<|endoftext|>")
    except Exception:  # noqa: BLE001
        eot = None
    if isinstance(eot, int):
        ids.add(eot)
    return sorted(i for i in ids if i >= 0)


def paper_prefix_pool(tokenizer: Any, texts: Iterable[str], k: int, size: int, seed: int) -> list[list[int]]:
    """The prefixes of the paper's protocol, in the order samples use them: sample ``i`` starts
    with ``pool[i % len(pool)]``.

    A prefix is the first ``k`` tokens of a text *as the tokenizer encodes it*, special tokens
    included, as in the reference code (``tokenizer(text)["input_ids"][:2]``): for a tokenizer
    that puts BOS in front (Llama), BOS is the first of the ``k``. Texts with fewer tokens are
    skipped; the first ``size`` usable texts are read and shuffled with ``random.Random(seed)``.
    Which prefix a sample gets depends only on the texts, ``size``, the seed and the sample's
    index, never on how many samples are generated in the end.
    """
    pool: list[list[int]] = []
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            continue
        head = text[: 64 * k + 256]
        ids = tokenizer(head, add_special_tokens=True)["input_ids"]
        if len(ids) <= k and len(head) < len(text):
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(ids) < k:
            continue
        pool.append([int(t) for t in ids[:k]])
        if len(pool) >= size:
            break
    if not pool:
        raise CalibrationError(
            f"No source text is at least {k} tokens long, so no prefixes could be taken from it.",
            hint="Pick another prefix source.",
        )
    random.Random(seed).shuffle(pool)
    return pool
