"""A small on-disk cache of *dense* perplexities.

Every headless job evaluates the dense model before pruning it, so comparing ten methods on one
model evaluates the same dense model ten times; on a CPU a full WikiText-2 pass takes minutes.
The dense perplexity depends only on the weights, the evaluation tokens and how they are cut, so
it is cached under a key made of exactly those:

* a signature of the weights (every parameter's shape, dtype, and sums over a strided sample of
  its values: a pruned or otherwise modified model never matches its dense original);
* a hash of the evaluation token ids, the window length, the window limit and the batch size;
* the compute device type and the torch version (perplexities agree only to rounding across them).

The cache is a JSON file in Prune Studio's cache folder (``PRUNESTUDIO_PPL_CACHE`` names another
file, or ``off`` turns the cache off), written atomically; a missing, corrupt or unwritable file
simply means no cache. Models whose weights are not materialised (disk offload) are never cached.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write_text

_FILE = "dense_perplexity.json"
_MAX_ENTRIES = 512
_SAMPLE = 4096  # values read per parameter for the signature


def weights_signature(model: torch.nn.Module) -> str | None:
    """Digest of the model's parameters (None if any is not materialised)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.device.type == "meta":
                return None
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // _SAMPLE)
            sample = flat[::step].to(torch.float64)
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}:".encode())
            h.update(torch.stack([sample.sum(), sample.abs().sum(), (sample * sample).sum(),
                                  (sample == 0).sum().to(torch.float64)]).cpu().numpy().tobytes())
    return h.hexdigest()


def dense_key(model: torch.nn.Module, ids: torch.Tensor, seqlen: int, max_windows: int | None,
              batch_size: int, device: torch.device | str) -> str | None:
    """The cache key of ``model``'s perplexity on ``ids`` cut this way (None: weights not materialised)."""
    return signature_key(weights_signature(model), ids, seqlen, max_windows, batch_size, device)


def signature_key(sig: str | None, ids: torch.Tensor, seqlen: int, max_windows: int | None,
                  batch_size: int, device: torch.device | str) -> str | None:
    """:func:`dense_key` from a :func:`weights_signature` taken earlier: the key of the original
    weights' perplexity once the model in memory was pruned (None when ``sig`` is None)."""
    if sig is None:
        return None
    h = hashlib.sha256()
    h.update(sig.encode())
    h.update(ids.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    h.update(f"|{seqlen}|{max_windows}|{batch_size}|{torch.device(device).type}|{torch.__version__}".encode())
    return h.hexdigest()


def _path() -> Path | None:
    env = os.environ.get("PRUNESTUDIO_PPL_CACHE")
    if env:
        return None if env.lower() == "off" else Path(env)
    from ..model.demo import cache_root

    return cache_root() / _FILE


def _read() -> dict[str, Any]:
    path = _path()
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def lookup(key: str | None) -> float | None:
    if key is None:
        return None
    val = _read().get(key)
    return float(val) if isinstance(val, (int, float)) else None


def store(key: str | None, ppl: float) -> None:
    path = _path()
    if key is None or path is None or not (ppl == ppl):  # never cache NaN
        return
    data = _read()
    data[key] = float(ppl)
    if len(data) > _MAX_ENTRIES:
        data = dict(list(data.items())[-_MAX_ENTRIES:])
    try:
        atomic_write_text(path, json.dumps(data))
    except OSError:  # read-only cache folder, disk full: no cache (atomic_write_text leaves nothing behind)
        pass
