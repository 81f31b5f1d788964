"""Capturing what every decoder block receives, and replaying blocks on those inputs.

Blocks of one model need not receive the same extras: sliding-window and full-attention layers
get different masks and rotary tables (Gemma 2/3, Cohere 2, OLMo 3), linear-attention, state-space
and convolution layers their own masks (Qwen3-Next, Falcon-H1, LFM2), Gemma 4 a per-layer input.
So the capture runs the model's own forward with every block stood in for by a recorder that
notes its positional and keyword arguments (hidden states, masks, position ids, rotary
embeddings, ...) and hands the hidden states on untouched; the recorder of the last block raises
a private exception that stops the forward pass (nothing after the blocks runs). Only that
exception is caught, so every real error still surfaces. The real blocks never run during the
capture (a disk-offloaded block is not read).

Replaying block ``i`` uses block 0's hidden states as they evolve through the pipeline and block
``i``'s own recorded extras (:meth:`BlockInputs.select`). A key/value cache is never recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..errors import Cancelled, PruneStudioError
from ..model.offload import move_outside, restore_outside

# keyword arguments that carry a KV cache: replaying them accumulates keys across calls
_CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past", "cache")


class _StopForward(Exception):
    """Raised by the capture hook once the first block's inputs are recorded."""


@dataclass
class BlockInputs:
    """Inputs of a block for every calibration batch: hidden states plus replayable extras.

    ``args``/``kwargs`` are the extras of the block selected last (:meth:`select`; block 0 at
    first). ``per_block[i]`` holds block ``i``'s own ``(args, kwargs)``; empty when the inputs
    were built by hand, and then every block gets ``args``/``kwargs``.
    """

    hidden: list[torch.Tensor]  # one [b, seq, hidden] tensor per batch
    args: list[tuple[Any, ...]]  # extra positional args per batch
    kwargs: list[dict[str, Any]]  # keyword args per batch (cache removed)
    per_block: list[tuple[list[tuple[Any, ...]], list[dict[str, Any]]]] = field(default_factory=list)

    def select(self, block_index: int) -> None:
        """Make block ``block_index``'s recorded extras the ones :func:`run_block` passes."""
        if self.per_block:
            self.args, self.kwargs = self.per_block[block_index]


def _clean_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in kwargs.items() if k not in _CACHE_KWARGS}
    if "use_cache" in out:
        out["use_cache"] = False
    return out


class _Recorder(nn.Module):
    """Stands in for block ``index`` during the capture: records its inputs, returns the hidden
    states unchanged; attribute reads the model's loop makes (``block_type``) reach the block."""

    def __init__(self, block: nn.Module, index: int, record: Callable[..., None], last: bool) -> None:
        super().__init__()
        object.__setattr__(self, "_block", block)  # not a child: the real block stays where it is
        self._index, self._record, self._last = index, record, last

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        h = self._record(self._index, args, kwargs)
        if self._last:
            raise _StopForward
        return h


def _split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, tuple[Any, ...], dict[str, Any]]:
    """(hidden states, other positional args, keyword args without the hidden states)."""
    if args:
        return args[0], tuple(args[1:]), dict(kwargs)
    kwargs = dict(kwargs)
    key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
    return kwargs.pop(key), (), kwargs


@torch.no_grad()
def capture_first_block_inputs(
    model: nn.Module,
    blocks_path: str,
    first_block: nn.Module,
    input_ids: torch.Tensor,
    batch_size: int,
    device: torch.device,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[BlockInputs, dict[str, torch.device]]:
    """Run ``model`` on ``input_ids`` in batches with recorders for blocks; record block 0's hidden
    states and every block's extras. ``first_block`` is block 0 of the list at ``blocks_path``."""
    blocks = model.get_submodule(blocks_path)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0 or blocks[0] is not first_block:
        raise ValueError(f"{blocks_path} is not the list of blocks whose first block was given")
    where = move_outside(model, blocks_path, device)
    nblocks = len(blocks)
    hidden: list[torch.Tensor] = []
    per_block: list[tuple[list[tuple[Any, ...]], list[dict[str, Any]]]] = [([], []) for _ in range(nblocks)]

    def record(i: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        h, rest, kw = _split(args, kwargs)
        if len(per_block[i][0]) != len(hidden) - (0 if i == 0 else 1):
            raise PruneStudioError(f"Block {i} of {blocks_path} ran out of order or twice in one forward pass; "
                                   "its inputs cannot be replayed block by block.")
        if i == 0:
            hidden.append(h.detach())
        per_block[i][0].append(rest)
        per_block[i][1].append(_clean_kwargs(kw))
        return args[0] if args else kwargs.get("hidden_states", h)

    originals = list(blocks)
    ok = False
    try:
        for i, b in enumerate(originals):
            blocks[i] = _Recorder(b, i, record, last=i == nblocks - 1)
        for i in range(0, input_ids.shape[0], batch_size):
            if should_stop():
                raise Cancelled()
            batch = input_ids[i : i + batch_size].to(device)
            try:
                model(input_ids=batch, use_cache=False)
            except _StopForward:
                pass
            missing = [j for j in range(nblocks) if len(per_block[j][0]) != len(hidden)]
            if missing:
                raise PruneStudioError(
                    f"Block {missing[0]} of {blocks_path} does not run in {type(model).__name__}'s forward "
                    "pass, so it cannot be pruned with calibration data.")
        ok = True
    finally:
        for i, b in enumerate(originals):
            blocks[i] = b
        if not ok:
            restore_outside(model, where)
    inputs = BlockInputs(hidden, per_block[0][0], per_block[0][1], per_block)
    return inputs, where


def run_block(block: nn.Module, inputs: BlockInputs, i: int) -> torch.Tensor:
    """Forward batch ``i`` through ``block``; returns the new hidden states."""
    out = block(inputs.hidden[i], *inputs.args[i], **inputs.kwargs[i])
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out
