"""How fast this machine multiplies matrices, and the sizes of a model that time estimates need.

The time estimates before long work (:mod:`prunestudio.core.run.estimate`) are FLOP counts
divided by a rate. The rate comes from :func:`machine_speed`: a one-off probe of a few matrix
products in the model's dtype on its device (about a quarter of a second), kept in a small JSON
file in Prune Studio's cache folder under the device, the dtype, the CPU model and the torch thread
count, so that it runs once per machine and setting. ``PRUNESTUDIO_SPEED_CACHE`` names another
file, or ``off`` keeps the probes in this process only (the tests do that). A missing, corrupt or
unwritable file only means the probe runs again.

:func:`model_facts` reads what the estimates need from a loaded model (parameter counts, hidden
size, blocks, vocabulary, the linear layers' shapes); torch is imported only inside the two
functions that need it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import atomic_write_text

_FILE = "machine_speed.json"
_PROBE_SIZE = 512  # rows x inner size of the probe's products (clipped to the model's hidden size)
_PROBE_SECONDS = 0.25  # the probe stops once it has run this long (after at least 2 products)
_MEMO: dict[str, "MachineSpeed"] = {}


@dataclass(frozen=True)
class ModelFacts:
    """The sizes of a model that its time estimates are made of."""

    params: int  # every parameter, the embedding and the output head included (tied: counted once)
    head_params: int  # vocabulary x hidden size: the output head's products per token
    hidden: int
    num_blocks: int
    vocab: int
    block_linears: tuple[tuple[int, int], ...]  # (out, in) of every prunable matrix of the first block
    dtype: str  # "float32", "bfloat16", ...
    device: str  # "cpu", "cuda:0", ...

    @property
    def block_params(self) -> int:
        """Weights of the linear layers of all blocks (what a block forward multiplies by)."""
        return self.num_blocks * sum(o * i for o, i in self.block_linears)

    def forward_flops_per_token(self, context: int, head: bool = True) -> float:
        """FLOPs of one token's forward pass with ``context`` tokens before it: 2 per weight of
        the blocks' linear layers, the attention's scores and weighted sum (4 x hidden per earlier
        token and block) and, with ``head``, the output head."""
        flops = 2.0 * self.block_params + 4.0 * self.num_blocks * self.hidden * max(context, 0)
        if head:
            flops += 2.0 * self.head_params
        return flops


@dataclass(frozen=True)
class MachineSpeed:
    """Matrix products per second on one device in one dtype (FLOP/s), and what was measured."""

    flops: float
    key: str  # device | dtype | CPU model | threads
    probed: bool  # measured now (False: read from the cache)


def model_facts(model: Any) -> ModelFacts:
    """The sizes of ``model`` (a Hugging Face causal LM) that :mod:`..run.estimate` needs."""
    from .architecture import copies, layout, weight_shape

    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    first = next(iter(model.parameters()), None)
    dtype = str(first.dtype).replace("torch.", "") if first is not None else "float32"
    device = str(first.device) if first is not None else "cpu"
    cfg = getattr(model, "config", None)
    text_cfg = getattr(cfg, "text_config", None) or cfg
    hidden = int(getattr(text_cfg, "hidden_size", 0) or 0)
    vocab = int(getattr(text_cfg, "vocab_size", 0) or 0)
    try:
        lay = layout(model)
        blocks: list[Any] = list(lay.blocks)
        first_block = lay.blocks[0]
        linears = tuple(weight_shape(first_block, n) for n in lay.names_of(0)
                        for _ in range(copies(first_block, n)))
    except Exception:  # noqa: BLE001 - an unknown layout: estimate from the parameter count alone
        blocks, linears = [], ()
    if not hidden and linears:
        hidden = linears[0][1]
    head = vocab * hidden
    if not linears:  # no block found: one pseudo-block holding every weight but the head
        rest = max(params - 2 * head, params // 2)
        linears = ((rest, 1),)
        blocks = [None]
    return ModelFacts(params=params, head_params=head, hidden=hidden, num_blocks=len(blocks), vocab=vocab,
                      block_linears=linears, dtype=dtype, device=device)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s "model name"; the platform's processor elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cache_file() -> Path | None:
    env = os.environ.get("PRUNESTUDIO_SPEED_CACHE")
    if env:
        return None if env.lower() == "off" else Path(env)
    from .catalog import cache_root

    return cache_root() / _FILE


def _read_cache(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def speed_key(device: str, dtype: str, threads: int) -> str:
    """The cache key of a probe: device type and index, dtype, CPU model, torch threads."""
    return f"{device}|{dtype}|{cpu_model()}|{threads}"


def probe_flops(device: str = "cpu", dtype: str = "float32", size: int = _PROBE_SIZE,
                seconds: float = _PROBE_SECONDS) -> float:
    """FLOP/s of ``[size, size] @ [size, size]`` products in ``dtype`` on ``device``: products
    run until ``seconds`` have passed (at least 2, after one to warm up)."""
    import torch

    dev = torch.device(device)
    dt = getattr(torch, dtype, torch.float32)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device=dev, dtype=dt)
    b = torch.randn(size, size, generator=g).to(device=dev, dtype=dt)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch.no_grad():
        torch.mm(a, b)
        sync()
        n, t0 = 0, time.perf_counter()
        while True:
            torch.mm(a, b)
            n += 1
            if n >= 2:
                sync()
                if time.perf_counter() - t0 >= seconds:
                    break
        sync()
        elapsed = max(time.perf_counter() - t0, 1e-9)
    return 2.0 * size ** 3 * n / elapsed


def known_speed(device: str = "cpu", dtype: str = "float32", threads: int | None = None) -> MachineSpeed | None:
    """:func:`machine_speed` if it is known without a probe (this process's memo or the cache
    file), else None: for callers that must not run the probe now (while a job computes)."""
    import torch

    if threads is None:
        threads = torch.get_num_threads()
    key = speed_key(device, dtype, threads)
    if key in _MEMO:
        return _MEMO[key]
    cached = _read_cache(_cache_file()).get(key)
    if isinstance(cached, (int, float)) and cached > 0:
        _MEMO[key] = MachineSpeed(float(cached), key, probed=False)
        return _MEMO[key]
    return None


def machine_speed(device: str = "cpu", dtype: str = "float32", threads: int | None = None) -> MachineSpeed:
    """This machine's FLOP/s for ``dtype`` on ``device`` with ``threads`` torch threads (now: the
    current setting): probed once per process (a quarter second) and combined with the cache file,
    which keeps the **highest** rate any probe has seen. Other processes can only slow a probe, so
    one taken while the machine was busy never lowers the figure (a probe cached on a busy machine
    once made a later estimate 7x too long: ``bench/results/NOTES.md``, bigger than memory), and a
    quiet moment raises it. The probe sets torch's thread count for its quarter second: call it when
    no job computes (:func:`known_speed` never probes)."""
    import torch

    if threads is None:
        threads = torch.get_num_threads()
    key = speed_key(device, dtype, threads)
    if key in _MEMO and _MEMO[key].probed:
        return _MEMO[key]
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        flops = probe_flops(device, dtype)
    finally:
        torch.set_num_threads(old)
    path = _cache_file()
    data = _read_cache(path)
    cached = data.get(key)
    best = max(flops, float(cached)) if isinstance(cached, (int, float)) and cached > 0 else flops
    if path is not None and best != cached:
        data[key] = best
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
        except OSError:
            pass
    speed = MachineSpeed(best, key, probed=True)
    _MEMO[key] = speed
    return speed
