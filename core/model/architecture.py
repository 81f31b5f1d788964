"""Architecture-agnostic discovery of decoder blocks and their prunable linear modules.

No ``model.model.layers``: the decoder blocks are the longest ``nn.ModuleList`` of blocks that hold
linear layers (see :func:`find_blocks`; true for Llama, Qwen2, Mistral, Gemma, Phi-3, OPT, GPT-2,
Falcon, and for hybrids whose layers mix attention with linear attention, state-space or
convolution mixers). Prunable modules are the ``nn.Linear`` (and GPT-2's transposed ``Conv1D``)
inside a block, found in *each* block: a hybrid's blocks differ (Qwen3-Next's linear-attention
layers have ``linear_attn.*`` where its full-attention layers have ``self_attn.*``).
Embeddings and ``lm_head`` live outside the blocks and are therefore never pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ModelLoadError
from . import experts, kinds


def _is_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D: weight is [in_features, out_features]
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_prunable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_conv1d(module)


@dataclass(frozen=True)
class BlockLayout:
    """Where the decoder blocks live and what can be pruned inside each of them.

    ``per_block[i]`` names block ``i``'s own prunable modules (relative to the block, in the order
    the block defines them, which is the forward order of every family we know); a module block
    ``i`` lacks is simply absent. ``module_names`` is the union over all blocks in first-seen order
    (the columns of a table of blocks by modules); on a model whose blocks are all alike it is
    every block's list.
    """

    path: str  # dotted path of the ModuleList, e.g. "model.layers" or "transformer.h"
    blocks: nn.ModuleList
    module_names: tuple[str, ...]  # union of the blocks' prunable modules, first-seen order
    per_block: tuple[tuple[str, ...], ...] = ()  # each block's own prunable modules

    def __len__(self) -> int:
        return len(self.blocks)

    def names_of(self, i: int) -> tuple[str, ...]:
        """Block ``i``'s own prunable module names."""
        return self.per_block[i] if self.per_block else self.module_names

    @property
    def uniform(self) -> bool:
        """Whether every block has the same prunable modules."""
        return all(names == self.module_names for names in self.per_block)


_ATTENTION_WORDS = ("attn", "attention")
# token mixers that take attention's place in hybrid blocks: state-space (Mamba) and short
# convolution layers (LFM2's ``conv``)
_MIXER_PARTS = ("mamba", "conv", "ssm")
_MLP_WORDS = ("mlp", "feed_forward", "ffn", "expert")
# projections of attention when the path does not say so (Nemotron-H's ``mixer.q_proj``)
_ATTENTION_LEAVES = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj")


def module_role(name: str) -> str:
    """``"attention"`` or ``"mlp"`` for a prunable module's name relative to its block.

    ``"attention"`` is the block's token mixer: a module whose path names attention
    (``self_attn.q_proj``, ``attn.c_proj``, ``self_attention.dense``, ``linear_attn.out_proj``), a
    state-space or convolution mixer (``mamba.in_proj``, LFM2's ``conv.in_proj``), or an attention
    projection under a neutral name (Nemotron-H's ``mixer.q_proj``). Everything else in a block is
    the MLP (``mlp.down_proj``, OPT's ``fc1``/``fc2``, ``feed_forward.w1``, ``shared_mlp.input_linear``,
    Nemotron-H's ``mixer.up_proj``).
    """
    parts = name.lower().split(".")
    if any(w in p for p in parts for w in _ATTENTION_WORDS):
        return "attention"
    if any(w in p for p in parts[:-1] for w in _MLP_WORDS):
        return "mlp"
    if any(p in _MIXER_PARTS or p.startswith(_MIXER_PARTS) for p in parts[:-1]):
        return "attention"
    if parts[-1] in _ATTENTION_LEAVES or (len(parts) > 1 and parts[-2] == "mixer"
                                           and parts[-1] in ("in_proj", "out_proj")):
        return "attention"
    return "mlp"


def _holds_linears(block: nn.Module) -> bool:
    return not is_prunable(block) and any(is_prunable(m) for m in block.modules())


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder-block ModuleList: the longest list of blocks that each hold linear layers.

    A list's entries may be of different classes (a hybrid built from one class per layer kind);
    a list nested inside another candidate's entries (experts inside a block) is never taken, nor
    is a list of bare linear layers.
    """
    candidates: list[tuple[str, nn.ModuleList]] = []
    # only the language model is searched (a VLM's vision tower is not); encoder-decoders are refused
    for name, mod in kinds.language_modules(model):
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if not all(_holds_linears(m) for m in mod):
            continue
        candidates.append((name, mod))
    outer = [(n, mod) for n, mod in candidates
             if not any(n.startswith(o + ".") for o, _ in candidates if o != n)]
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in outer:
        if best is None or len(mod) > len(best[1]):
            best = (name, mod)
    if best is None:
        raise ModelLoadError(
            f"Could not find the decoder blocks of this {type(model).__name__}: "
            "no list of repeated blocks containing linear layers."
        )
    return best


_ROUTER_PARTS = ("gate", "router", "shared_expert_gate")


def is_router(name: str, module: nn.Module) -> bool:
    """Whether ``module`` (``name`` relative to its block) is a mixture-of-experts router or gate:
    it decides which experts run (or how much a shared expert counts), so it stays dense.

    A router module of its own class (``...TopKRouter``, ``...Gate``, ``...Gating``), or a linear
    layer named ``gate`` / ``router`` / ``shared_expert_gate`` that narrows its input to a few
    scores (fewer outputs than inputs: an MLP's ``gate_proj`` widens it and is never matched)."""
    cls = type(module).__name__.lower()
    if "router" in cls or cls.endswith("gate") or cls.endswith("gating"):
        return True
    if not any(p in _ROUTER_PARTS for p in name.split(".")):
        return False
    if is_prunable(module):
        w = get_weight_2d(module)
        return int(w.shape[0]) < int(w.shape[1])
    return True


def is_time_step_projection(name: str) -> bool:
    """A state-space mixer's time-step projection (Mamba's ``dt_proj``): it sets the discretisation
    step of the recurrence, and some models (Jamba) use its weight directly rather than call it,
    so no calibration input ever reaches it. Left dense by rule, like ``dt_bias``."""
    return name.rsplit(".", 1)[-1] == "dt_proj"


def block_module_names(block: nn.Module, skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    """One block's prunable module names, in definition order, less those ``skip`` matches and
    mixture-of-experts routers (:func:`is_router`). Fused experts give one name per kind of
    matrix, standing for that matrix of every expert (``mlp.experts[*].down_proj``, see
    :mod:`.experts`)."""
    out: list[str] = []
    for n, m in block.named_modules():
        if not n:
            continue
        if is_prunable(m) and not is_router(n, m) and not is_time_step_projection(n):
            names = [n]
        elif experts.is_fused_experts(m):
            names = [experts.expert_name(n, mx.kind) for mx in experts.matrices(m)]
        else:
            continue
        out.extend(x for x in names if not any(s and s in x for s in skip))
    return tuple(out)


def layout(model: nn.Module, skip: tuple[str, ...] = ()) -> BlockLayout:
    """Blocks and each block's prunable module names. ``skip`` drops modules whose name contains
    any pattern."""
    path, blocks = find_blocks(model)
    per_block = tuple(block_module_names(b, skip) for b in blocks)
    union = tuple(dict.fromkeys(n for names in per_block for n in names))
    return BlockLayout(path=path, blocks=blocks, module_names=union, per_block=per_block)


def get_weight_2d(module: nn.Module) -> torch.Tensor:
    """The weight as ``[out_features, in_features]`` (a transposed view for GPT-2's Conv1D)."""
    return module.weight.t() if _is_conv1d(module) else module.weight


def in_features(module: nn.Module) -> int:
    return int(module.weight.shape[0] if _is_conv1d(module) else module.weight.shape[1])


def set_weight_2d(module: nn.Module, w: torch.Tensor) -> None:
    """Write back a ``[out, in]`` weight in the module's own layout and dtype."""
    with torch.no_grad():
        target = module.weight
        target.copy_((w.t() if _is_conv1d(module) else w).to(target.dtype))


def apply_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Zero the weights where ``mask`` (``[out, in]``, True = prune) is set."""
    with torch.no_grad():
        m = mask.t() if _is_conv1d(module) else mask
        module.weight.masked_fill_(m.to(module.weight.device), 0)


def get_submodule(block: nn.Module, name: str) -> nn.Module:
    return block.get_submodule(name)


def weight_shape(block: nn.Module, name: str) -> tuple[int, int]:
    """``(out_features, in_features)`` of the prunable module ``name`` of ``block`` (of one expert's
    matrix for a name of every expert's, ``mlp.experts[*].down_proj``)."""
    fused = experts.split_name(name)
    if fused is not None:
        return experts.matrix_shape(block.get_submodule(fused[0]), fused[1])
    w = get_weight_2d(block.get_submodule(name))
    return int(w.shape[0]), int(w.shape[1])


def copies(block: nn.Module, name: str) -> int:
    """How many matrices ``name`` stands for: the number of experts for a name of every expert's
    matrix, 1 for a linear layer."""
    fused = experts.split_name(name)
    return experts.num_experts(block.get_submodule(fused[0])) if fused is not None else 1


def weight_numel(block: nn.Module, name: str) -> int:
    """The weights the prunable module ``name`` holds (every expert's, for a name of every expert's)."""
    o, i = weight_shape(block, name)
    return o * i * copies(block, name)
