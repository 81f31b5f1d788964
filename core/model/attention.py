"""Attention for one new token at a time (decoding) on the CPU, for grouped-query models.

Transformers' ``sdpa`` attention, for a single query token of a grouped-query model (several query
heads per key/value head) and no attention mask, hands torch ``enable_gqa=True``; with a mask it
first folds each group's query heads into rows of one key/value head (``pack_gqa``) and calls the
plain kernel. On the CPU the first is much slower, most of all in bfloat16: on a 2-core Zen 4 a
decoding step of the default model at batch 80 and ~250 tokens of context spent 354 ms of its 522
in attention in bfloat16 (``bench/results/NOTES.md``). The self-generation sampler's rows all have
the same length in both protocols, so the mask is all ones, transformers drops it, and every step
took the slow path.

:func:`decode_attention` makes a model use :func:`packed_sdpa` while it samples: in exactly that
case (CPU, bfloat16 or float16, one query token, grouped heads, no mask, nothing else asked of the
kernel) the heads are
folded as transformers folds them with a mask, and the plain kernel runs; every other call is
transformers' own ``sdpa`` function, unchanged. The attention is the same mathematics (each query
head against its group's keys and values); only the kernel's order of operations differs, so a
bfloat16 sample may differ from one drawn before in a token here and there (it is still the same
for the same seed every time).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

NAME = "prunestudio_packed_sdpa"
# Only low-precision attention is folded: in float32 the two kernels decode at the same speed here
# (80 x 256 at batch 80: 259 against 271 tokens/s), so float32 keeps transformers' path and draws
# exactly the tokens it drew before; in bfloat16 folding decodes 1.9x faster (446 against 233).
_FOLDED_DTYPES = (torch.bfloat16, torch.float16)
_registered = False


def packed_sdpa(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                is_causal: bool | None = None, position_bias: torch.Tensor | None = None,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Transformers' attention-function signature (``query`` ``[batch, heads, q, dim]``, ``key`` and
    ``value`` ``[batch, kv_heads, k, dim]``); returns ``([batch, q, heads, dim], None)``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = int(getattr(module, "num_key_value_groups", 1) or 1)
    b, heads, q_len, dim = query.shape
    plain = (query.device.type == "cpu" and query.dtype in _FOLDED_DTYPES and q_len == 1 and groups > 1
             and attention_mask is None
             and not dropout and position_bias is None and heads == key.shape[1] * groups
             and key.shape[-1] == dim and not any(kwargs.get(k) is not None for k in ("softcap", "s_aux", "sinks"))
             and not kwargs.get("output_attentions", False))
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, position_bias=position_bias, **kwargs)
    return folded_sdpa(query, key, value, groups, scaling), None


def folded_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, groups: int,
                scaling: float | None) -> torch.Tensor:
    """One query token per row: each group's query heads as rows of its key/value head, one call
    of the plain kernel; ``[batch, 1, heads, dim]``."""
    b, heads, _, dim = query.shape
    folded = query.reshape(b, heads // groups, groups, dim)
    out = torch.nn.functional.scaled_dot_product_attention(folded, key, value, scale=scaling)
    return out.reshape(b, heads, 1, value.shape[-1]).transpose(1, 2).contiguous()


def _register() -> bool:
    global _registered
    if _registered:
        return True
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    except ImportError:  # an older transformers: models keep their own attention
        return False
    AttentionInterface.register(NAME, packed_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # masks exactly as for sdpa
    _registered = True
    return True


def _configs(model: Any) -> list[Any]:
    """Every distinct config the model's modules read their attention implementation from."""
    seen: dict[int, Any] = {}
    for m in model.modules() if hasattr(model, "modules") else [model]:  # the model itself first
        cfg = getattr(m, "config", None)
        if cfg is not None and id(cfg) not in seen and hasattr(cfg, "_attn_implementation_internal"):
            seen[id(cfg)] = cfg
            for sub in getattr(cfg, "sub_configs", {}) or {}:
                s = getattr(cfg, sub, None)
                if s is not None and hasattr(s, "_attn_implementation_internal"):
                    seen.setdefault(id(s), s)
    return list(seen.values())


@contextmanager
def decode_attention(model: Any) -> Iterator[bool]:
    """Within the block, the parts of ``model`` that use transformers' ``sdpa`` attention use
    :func:`packed_sdpa`; restored after. Yields whether anything was switched."""
    switched: list[Any] = []
    if _register():
        for cfg in _configs(model):
            if getattr(cfg, "_attn_implementation_internal", None) == "sdpa":
                cfg._attn_implementation_internal = NAME
                switched.append(cfg)
    try:
        yield bool(switched)
    finally:
        for cfg in switched:
            cfg._attn_implementation_internal = "sdpa"


__all__ = ["decode_attention", "packed_sdpa", "folded_sdpa", "NAME"]
