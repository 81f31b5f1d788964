"""Requests as token ids, the way lm-evaluation-harness makes them (its ``_encode_pair`` and
``HFLM``'s maximum length): trailing spaces of the context move to the continuation, then
``context_enc = tok(context)``, ``whole = tok(context + continuation)`` and the continuation tokens
are ``whole[len(context_enc):]``; an empty context becomes the BOS (or EOS) token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import EvaluationError

__all__ = ["encode_pairs", "model_max_length", "pad_token_id"]
# What transformers' tokenizers use as "no limit" for ``model_max_length``.
_HUGE_MAX_LENGTH = 1_000_000_000
_DEFAULT_MAX_LENGTH = 2048


def _encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    try:
        return [list(ids) for ids in tokenizer(texts)["input_ids"]]
    except Exception:  # tokenizers that are not batch-callable
        return [list(tokenizer.encode(t)) for t in texts]


def _prefix_token_id(tokenizer: Any) -> int:
    for attr in ("bos_token_id", "eos_token_id"):
        tid = getattr(tokenizer, attr, None)
        if tid is not None:
            return int(tid)
    raise EvaluationError("The tokenizer has neither a BOS nor an EOS token to stand for an empty context.")


def pad_token_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        tid = getattr(tokenizer, attr, None)
        if tid is not None:
            return int(tid)
    return 0


def encode_pairs(tokenizer: Any, requests: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """Token ids ``(context_enc, continuation_enc)`` for each ``(context, continuation)``,
    split the lm-eval way (see the module docstring)."""
    prepared: list[tuple[str, str]] = []
    for context, continuation in requests:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        prepared.append((context, continuation))

    # Encode each distinct string once (most tasks repeat one context for every choice).
    strings: dict[str, int] = {}
    for context, continuation in prepared:
        if context:
            strings.setdefault(context, len(strings))
            strings.setdefault(context + continuation, len(strings))
        else:
            strings.setdefault(continuation, len(strings))
    encoded = _encode_batch(tokenizer, list(strings))

    out: list[tuple[list[int], list[int]]] = []
    prefix: int | None = None
    for context, continuation in prepared:
        if context:
            context_enc = encoded[strings[context]]
            whole = encoded[strings[context + continuation]]
            out.append((context_enc, whole[len(context_enc) :]))
        else:
            # lm-eval: an empty context becomes the BOS (or EOS) token.
            cont = tokenizer.encode(continuation, add_special_tokens=False) if continuation else []
            if prefix is None:
                prefix = _prefix_token_id(tokenizer)
            if cont and cont[0] == prefix:
                out.append((cont[:1], cont[1:]))
            else:
                out.append(([prefix], list(cont)))
    return out


def model_max_length(model: Any, tokenizer: Any) -> int:
    """The longest input the model takes, found as lm-eval's HFLM finds it."""
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < _HUGE_MAX_LENGTH:
        return value
    return _DEFAULT_MAX_LENGTH
