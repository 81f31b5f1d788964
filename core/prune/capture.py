"""Capturing what the first decoder block receives, and replaying blocks on those inputs.

The model runs normally until its first block is about to execute; a forward pre-hook records
the block's positional and keyword arguments (hidden states, attention mask, position ids,
rotary embeddings, ...) and raises a private exception that stops the forward pass. Only that
exception is caught, so every real error still surfaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..errors import Cancelled
from ..model.offload import move_outside

# keyword arguments that carry a KV cache: replaying them accumulates keys across calls
_CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past", "cache")


class _StopForward(Exception):
    """Raised by the capture hook once the first block's inputs are recorded."""


@dataclass
class BlockInputs:
    """Inputs of a block for every calibration batch: hidden states plus replayable extras."""

    hidden: list[torch.Tensor]  # one [b, seq, hidden] tensor per batch
    args: list[tuple[Any, ...]]  # extra positional args per batch
    kwargs: list[dict[str, Any]]  # keyword args per batch (cache removed)


def _clean_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in kwargs.items() if k not in _CACHE_KWARGS}
    if "use_cache" in out:
        out["use_cache"] = False
    return out


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
    """Run the embedding part of ``model`` on ``input_ids`` in batches and record block-0 inputs."""
    where = move_outside(model, blocks_path, device)
    hidden: list[torch.Tensor] = []
    args_l: list[tuple[Any, ...]] = []
    kwargs_l: list[dict[str, Any]] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if args:
            h, rest = args[0], tuple(args[1:])
        else:
            key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
            kwargs = dict(kwargs)
            h, rest = kwargs.pop(key), ()
        hidden.append(h.detach())
        args_l.append(rest)
        kwargs_l.append(_clean_kwargs(kwargs))
        raise _StopForward

    # prepend: runs before any other pre-hook of the block (a disk-offloaded block is not read)
    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True, prepend=True)
    try:
        for i in range(0, input_ids.shape[0], batch_size):
            if should_stop():
                raise Cancelled()
            batch = input_ids[i : i + batch_size].to(device)
            try:
                model(input_ids=batch, use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return BlockInputs(hidden, args_l, kwargs_l), where


def run_block(block: nn.Module, inputs: BlockInputs, i: int) -> torch.Tensor:
    """Forward batch ``i`` through ``block``; returns the new hidden states."""
    out = block(inputs.hidden[i], *inputs.args[i], **inputs.kwargs[i])
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out
