"""Pruned blocks on disk, compactly: each pruned matrix as its kept values and a bit mask.

Disk offload (:mod:`.offload`) writes every pruned block to a work folder and reads it back
whenever the block runs (the next block's inputs, evaluation, export). Stored dense, those files
would take the model's size a second time next to its own shards; stored as kept values plus one
bit per weight they take 56% of it at 50% sparsity in bf16 (53% in fp32), which is what lets a
model of 1.5x the machine's RAM be pruned on a disk with room for 1.6x its size
(``bench/bigger_than_memory.py``). Price: writing a 25,600 x 5,120 bf16 matrix this way took
1.35 s against 0.35 s dense, reading it back 0.9 s (``bench/large_matrix.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..files import atomic_path

__all__ = ["COMPACT_KEY", "compact_tensors", "read_compact", "write_compact"]

COMPACT_KEY = "prunestudio_compact"
"""Metadata key of a pruned block's file: JSON ``{name: shape}`` of the tensors stored compactly."""


def compact_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Pruned matrices as their kept values (``name::kept``, in row-major order) and a bit mask
    (``name::mask``, packed eight weights to a byte) wherever that is smaller than the matrix, which
    it is from a few percent of zeros on: at 50% sparsity a block takes 56% of its bf16 size (53% in
    fp32). A weight counts as kept when any bit of it is set, so ``-0.0`` survives the round trip and
    the block reads back bit for bit."""
    import numpy as np

    stored: dict[str, torch.Tensor] = {}
    compact: dict[str, list[int]] = {}
    for rel, t in tensors.items():
        if t.dim() < 2 or not t.is_floating_point():
            stored[rel] = t
            continue
        flat = t.reshape(-1)
        bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        keep = flat.view(bits) != 0
        kept = int(keep.sum())
        if kept * t.element_size() + (flat.numel() + 7) // 8 >= flat.numel() * t.element_size():
            stored[rel] = t
            continue
        stored[rel + "::kept"] = flat[keep]
        stored[rel + "::mask"] = torch.from_numpy(np.packbits(keep.numpy()))
        compact[rel] = list(t.shape)
    return stored, compact


def read_compact(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """A pruned block's tensors from its file (see :func:`compact_tensors`), module-relative names."""
    import numpy as np
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        compact = json.loads((f.metadata() or {}).get(COMPACT_KEY, "{}"))
        for rel in names:
            shape = compact.get(rel)
            if shape is None:
                out[rel] = f.get_tensor(rel)
                continue
            kept = f.get_tensor(rel + "::kept")
            numel = int(np.prod(shape))
            keep = torch.from_numpy(np.unpackbits(f.get_tensor(rel + "::mask").numpy(), count=numel).view(np.bool_))
            dense = torch.zeros(numel, dtype=kept.dtype)
            dense[keep] = kept
            out[rel] = dense.view(shape)
    return out


def write_compact(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` to the safetensors file ``path`` (atomically), matrices compactly."""
    from safetensors.torch import save_file

    stored, compact = compact_tensors(tensors)
    with atomic_path(path) as tmp:
        save_file(stored, str(tmp), metadata={"format": "pt", COMPACT_KEY: json.dumps(compact)})
