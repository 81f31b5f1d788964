"""The fused experts of mixture-of-experts models: each expert's matrices, and the experts' forward
pass with every expert's own inputs in view.

transformers 5 keeps the routed experts of most MoE models (Qwen3-MoE, Qwen3.5-MoE, Qwen3-Next,
Mixtral, OLMoE, DeepSeek-V2/V3, GLM-4 MoE, GPT-OSS, Granite MoE, ...) as one module holding 3-D
parameters, all following one protocol (set by ``transformers.integrations.moe
.use_experts_implementation``, which also lets a model swap in batched kernels):

* ``gate_up_proj`` ``[E, 2I, H]`` (gate and up projections of every expert; ``up_proj`` ``[E, I, H]``
  when ``has_gate`` is false) and ``down_proj`` ``[E, H, I]``; ``[E, in, out]`` instead when
  ``is_transposed``; the gate and up rows concatenated (``[gate; up]``) or interleaved
  (``gate0, up0, gate1, ...``) as ``is_concatenated`` says; ``*_bias`` ``[E, out]`` when ``has_bias``;
* the activation ``_apply_gate(gate_up_out)`` (gated) or ``act_fn`` (not gated), an optional
  ``post_expert_norm``;
* ``forward(hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k])``: token ``t`` goes
  through experts ``top_k_index[t]`` and their outputs are summed with weights ``top_k_weights[t]``.

Prune Studio prunes each expert's matrices as matrices of their own, named like the linear layers
of a dense MLP: ``mlp.experts[*].gate_proj``, ``mlp.experts[*].up_proj`` and
``mlp.experts[*].down_proj`` stand for the E matrices of that kind (``[*]`` marks a name as such;
``mlp.experts[3].down_proj`` is expert 3's). Each is a *view* into the fused parameter, so pruning
writes into the model's own tensors and an export keeps the model's own layout.

:func:`routed_forward` computes what the module's forward computes, one expert at a time, and hands
each expert's inputs (the tokens routed to it, and the activation its ``down_proj`` reads) to a
callback; the statistics of :mod:`prunestudio.core.prune.experts` come from it. It is checked
against the module's own forward (:func:`check_forward`) before its statistics are trusted.

Models whose experts are a ``ModuleList`` of ``nn.Linear`` MLPs need none of this (their linear
layers are pruned like any other, with forward hooks that see exactly the routed tokens); other
fused layouts (Llama 4's) are left dense and reported by :mod:`.coverage`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "MARK",
    "ExpertMatrix",
    "ExpertsForwardMismatch",
    "check_forward",
    "expert_name",
    "expert_weight",
    "is_fused_experts",
    "matrices",
    "matrix_shape",
    "num_experts",
    "params_of",
    "routed_forward",
    "split_name",
]

MARK = "[*]"
"""What makes a layout name stand for the matrices of every expert: ``mlp.experts[*].down_proj``."""

_PROTOCOL = ("has_gate", "is_transposed")


def is_fused_experts(module: nn.Module) -> bool:
    """Whether ``module`` keeps its experts as 3-D parameters under transformers' experts protocol."""
    if not all(hasattr(module, a) for a in _PROTOCOL):
        return False
    up = getattr(module, "gate_up_proj" if module.has_gate else "up_proj", None)
    down = getattr(module, "down_proj", None)
    return (isinstance(up, torch.Tensor) and isinstance(down, torch.Tensor)
            and up.dim() == 3 and down.dim() == 3 and up.shape[0] == down.shape[0])


@dataclass(frozen=True)
class ExpertMatrix:
    """One kind of matrix of every expert (``gate_proj``, ``up_proj`` or ``down_proj``)."""

    kind: str
    """``gate_proj``, ``up_proj`` or ``down_proj``."""
    param: str
    """The fused parameter it lives in (``gate_up_proj``, ``up_proj``, ``down_proj``)."""
    reads: str
    """What it multiplies: ``"input"`` (the tokens routed to the expert) or ``"hidden"`` (the
    expert's activation, which its ``down_proj`` reads)."""


def matrices(module: nn.Module) -> tuple[ExpertMatrix, ...]:
    """The kinds of matrix of a fused experts module, in forward order."""
    if module.has_gate:
        first: tuple[ExpertMatrix, ...] = (ExpertMatrix("gate_proj", "gate_up_proj", "input"),
                                           ExpertMatrix("up_proj", "gate_up_proj", "input"))
    else:
        first = (ExpertMatrix("up_proj", "up_proj", "input"),)
    return first + (ExpertMatrix("down_proj", "down_proj", "hidden"),)


def params_of(module: nn.Module) -> dict[str, tuple[str, ...]]:
    """``{fused parameter: the matrix kinds it holds}`` (``gate_up_proj``: gate and up)."""
    out: dict[str, tuple[str, ...]] = {}
    for m in matrices(module):
        out[m.param] = out.get(m.param, ()) + (m.kind,)
    return out


def num_experts(module: nn.Module) -> int:
    return int(module.down_proj.shape[0])


def expert_name(path: str, kind: str) -> str:
    """``mlp.experts`` + ``down_proj`` -> ``mlp.experts[*].down_proj``."""
    return f"{path}{MARK}.{kind}"


def split_name(name: str) -> tuple[str, str] | None:
    """``mlp.experts[*].down_proj`` -> ``("mlp.experts", "down_proj")``; None for any other name."""
    if MARK + "." not in name:
        return None
    path, kind = name.split(MARK + ".", 1)
    return path, kind


def _matrix(module: nn.Module, kind: str) -> ExpertMatrix:
    for m in matrices(module):
        if m.kind == kind:
            return m
    raise KeyError(f"{type(module).__name__} has no {kind} matrices")


def expert_weight(module: nn.Module, kind: str, e: int) -> torch.Tensor:
    """Expert ``e``'s ``kind`` matrix as an ``[out, in]`` *view* of the fused parameter: writing
    into it (``copy_``, ``masked_fill_``) changes the model's own tensor."""
    m = _matrix(module, kind)
    w = getattr(module, m.param)[e]
    if module.is_transposed:
        w = w.t()  # stored [in, out]
    if m.param == "gate_up_proj":
        half = w.shape[0] // 2
        concatenated = getattr(module, "is_concatenated", True)
        if kind == "gate_proj":
            w = w[:half] if concatenated else w[0::2]
        else:
            w = w[half:] if concatenated else w[1::2]
    return w


def matrix_shape(module: nn.Module, kind: str) -> tuple[int, int]:
    """``(out_features, in_features)`` of one expert's ``kind`` matrix."""
    w = expert_weight(module, kind, 0)
    return int(w.shape[0]), int(w.shape[1])


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, transposed: bool) -> torch.Tensor:
    y = x @ w if transposed else nn.functional.linear(x, w)
    return y + b if b is not None else y


OnExpert = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]
"""``on_expert(e, token_index, x_e, hidden_e)``: expert ``e`` received tokens ``token_index`` (rows of
the experts' input) with inputs ``x_e`` ``[n, H]``; ``hidden_e`` ``[n, I]`` is what its ``down_proj``
reads. Called once per expert that received tokens, in expert order."""


def routed_forward(module: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                   top_k_weights: torch.Tensor, on_expert: OnExpert | None = None,
                   only: Callable[[int], bool] | None = None) -> torch.Tensor:
    """The experts' output, computed one expert at a time as the protocol defines it, with each
    expert's inputs handed to ``on_expert``. ``only`` (an expert index -> bool) skips the others'
    work and leaves their contribution out of the output (for a pass that only wants inputs)."""
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    idx = top_k_index.reshape(hidden.shape[0], -1)
    weights = top_k_weights.reshape(hidden.shape[0], -1)
    E = num_experts(module)
    out = torch.zeros_like(hidden)
    flat = idx.reshape(-1)
    valid = flat < E  # expert-parallel sentinels point past the last expert
    order = torch.argsort(torch.where(valid, flat, E), stable=True)
    counts = torch.bincount(flat[valid], minlength=E).tolist()
    k = idx.shape[1]
    up_name = "gate_up_proj" if module.has_gate else "up_proj"
    has_bias = bool(getattr(module, "has_bias", False))
    start = 0
    for e in range(E):
        n = counts[e]
        if n == 0 or (only is not None and not only(e)):
            start += n
            continue
        pos = order[start:start + n]
        start += n
        token = pos // k
        x = hidden[token]
        up_b = getattr(module, up_name + "_bias")[e] if has_bias else None
        y = _linear(x, getattr(module, up_name)[e], up_b, module.is_transposed)
        h = module._apply_gate(y) if module.has_gate else module.act_fn(y)
        if on_expert is not None:
            on_expert(e, token, x, h)
        down_b = module.down_proj_bias[e] if has_bias else None
        y = _linear(h, module.down_proj[e], down_b, module.is_transposed)
        if getattr(module, "has_post_expert_norm", False):
            y = module.post_expert_norm(y)
        y = y * weights.reshape(-1)[pos, None].to(y.dtype)
        out.index_add_(0, token, y.to(out.dtype))
    return out.reshape(hidden_states.shape)


class ExpertsForwardMismatch(Exception):
    """Private to :mod:`prunestudio.core`: :func:`routed_forward` does not reproduce a module's own
    forward pass (the pruning code turns it into a readable error)."""


def check_forward(module: nn.Module, original: Callable[..., torch.Tensor], hidden_states: torch.Tensor,
                  top_k_index: torch.Tensor, top_k_weights: torch.Tensor, ours: torch.Tensor) -> None:
    """Raise :class:`ExpertsForwardMismatch` unless ``ours`` (from :func:`routed_forward`) equals the
    module's own forward on the same inputs, up to rounding in the module's dtype."""
    ref = original(hidden_states, top_k_index, top_k_weights)
    if isinstance(ref, (tuple, list)):
        ref = ref[0]
    ref, got = ref.float().reshape(-1), ours.float().reshape(-1)
    if ref.shape != got.shape:
        raise ExpertsForwardMismatch(f"output shape {tuple(ours.shape)} instead of {tuple(ref.shape)}")
    tol = 1e-4 if hidden_states.dtype == torch.float32 else 3e-2
    err = float((ref - got).norm() / ref.norm().clamp_min(1e-12))
    if err > tol:
        raise ExpertsForwardMismatch(f"relative difference {err:.2e} from the module's own forward")
