"""Architecture-agnostic discovery of decoder blocks and their prunable linear modules.

No ``model.model.layers``: the decoder blocks are the longest ``nn.ModuleList`` whose children
are all of one class (true for Llama, Qwen2, Mistral, Gemma, Phi-3, OPT, GPT-2, Falcon, ...).
Prunable modules are the ``nn.Linear`` (and GPT-2's transposed ``Conv1D``) inside a block.
Embeddings and ``lm_head`` live outside the blocks and are therefore never pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ModelLoadError


def _is_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D: weight is [in_features, out_features]
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_prunable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_conv1d(module)


@dataclass(frozen=True)
class BlockLayout:
    """Where the decoder blocks live and what can be pruned inside them."""

    path: str  # dotted path of the ModuleList, e.g. "model.layers" or "transformer.h"
    blocks: nn.ModuleList
    module_names: tuple[str, ...]  # prunable modules, relative to a block, in forward order

    def __len__(self) -> int:
        return len(self.blocks)


_ATTENTION_WORDS = ("attn", "attention")


def module_role(name: str) -> str:
    """``"attention"`` or ``"mlp"`` for a prunable module's name relative to its block.

    A module belongs to attention when a component of its path names it (``self_attn.q_proj``,
    ``attn.c_proj``, ``self_attention.dense``); everything else in a block is the MLP
    (``mlp.down_proj``, OPT's ``fc1``/``fc2``, ``feed_forward.w1``).
    """
    parts = name.lower().split(".")
    return "attention" if any(w in p for p in parts for w in _ATTENTION_WORDS) else "mlp"


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder-block ModuleList: the longest list of same-class modules holding linears."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        kinds = {type(m) for m in mod}
        if len(kinds) != 1:
            continue
        if not any(is_prunable(m) for m in mod[0].modules()):
            continue
        if best is None or len(mod) > len(best[1]):
            best = (name, mod)
    if best is None:
        raise ModelLoadError(
            f"Could not find the decoder blocks of this {type(model).__name__}: "
            "no list of repeated blocks containing linear layers."
        )
    return best


def layout(model: nn.Module, skip: tuple[str, ...] = ()) -> BlockLayout:
    """Blocks and prunable module names. ``skip`` drops modules whose name contains any pattern."""
    path, blocks = find_blocks(model)
    names = tuple(
        n for n, m in blocks[0].named_modules()
        if n and is_prunable(m) and not any(s and s in n for s in skip)
    )
    return BlockLayout(path=path, blocks=blocks, module_names=names)


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
