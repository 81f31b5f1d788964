"""Choosing the compute device and dtype."""

from __future__ import annotations

import ctypes
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from ..errors import ConfigError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU. ``cuda``/``cuda:1``/``cpu`` are taken as given."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"Unknown device '{name}'. Use auto, cpu, cuda or cuda:N.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"Device '{name}' was asked for but no CUDA GPU is available.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"Device '{name}' does not exist: {torch.cuda.device_count()} GPU(s) found.")
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on the CPU."""
    name = (name or "auto").lower()
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    if name not in DTYPES:
        raise ConfigError(f"Unknown dtype '{name}'. Use auto, fp32, bf16 or fp16.")
    return DTYPES[name]


def _cpu_supports(probe: str) -> bool:
    """One of torch's CPU capability probes (``torch.cpu._is_..._supported``); False if absent."""
    fn = getattr(torch.cpu, probe, None)
    try:
        return bool(fn()) if callable(fn) else False
    except Exception:  # noqa: BLE001 - a probe that fails says nothing is supported
        return False


def slow_dtype_warning(device: torch.device, dtype: torch.dtype) -> str | None:
    """What to tell the user when ``dtype`` has no native arithmetic on ``device``, else None.

    A CPU without AVX512-BF16 or AMX (e.g. AMD Zen 3, Intel before Cooper Lake) emulates bfloat16
    products: on a 2-core Zen 3 a forward pass of the demo model over 4 x 512 tokens took 37.5 s in
    bf16 against 7.1 s in fp32, and a Wanda run in bf16 had not finished after 4.6 times its fp32
    time (``bench/results/NOTES.md``). The run is still correct, and bf16 halves the weights' memory.
    """
    if device.type != "cpu" or dtype != torch.bfloat16:
        return None
    if _cpu_supports("_is_avx512_bf16_supported") or _cpu_supports("_is_amx_tile_supported"):
        return None
    return ("This CPU has no bfloat16 instructions (AVX512-BF16 or AMX), so bf16 arithmetic is emulated "
            "and runs about five times slower than fp32 here; choose fp32 for speed (bf16 only saves memory).")


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def model_device(model: Any) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` means a device or the host ran out of memory: CUDA's OutOfMemoryError, or a
    RuntimeError saying so (MPS: "out of memory"; the CPU allocator: "can't allocate memory")."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


# Float32 logits (and the same-sized temporaries) held at once by a scoring pass.
LOGITS_BUDGET_BYTES = 512 * 2**20


def logits_micro_batch(requested: int, seqlen: int, vocab: int, copies: int = 1) -> int:
    """How many sequences to score at once so that ``copies`` float32 ``[seqlen, vocab]`` arrays per
    sequence stay within :data:`LOGITS_BUDGET_BYTES`: at most ``requested``, at least 1."""
    per_sequence = max(1, seqlen * vocab * 4 * copies)
    return max(1, min(requested, LOGITS_BUDGET_BYTES // per_sequence))


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


@contextmanager
def one_cpu_thread(device: torch.device | str) -> Iterator[None]:
    """Run the enclosed work with one intra-op thread when ``device`` is the CPU.

    For the per-module algebra of pruning (small LAPACK calls, the SparseGPT column loop, top-k):
    a second thread gains little there, and when other processes keep the cores busy the threads'
    barriers make it many times slower (measured on 2 busy cores: ``cholesky_inverse`` of a
    1536 x 1536 matrix 0.27 s with one thread, 3 to 16 s with two). The forward passes and the
    Hessian products keep all threads.
    """
    n = torch.get_num_threads()
    if torch.device(device).type != "cpu" or n <= 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


LARGE_MATRIX = 1 << 23
"""Elements from which a matrix's own work (scores, top-k, masks, the output error) keeps every
CPU thread: its kernels are long enough that a busy core's barrier costs little beside them. A
25,600 x 5,120 matrix (a 32B-parameter model's MLP) pruned by Wanda took 0.58x the time with 2
threads as with one, same mask (``bench/large_matrix.py``, ``bench/results/NOTES.md``)."""


@contextmanager
def threads_for_matrix(t: torch.Tensor) -> Iterator[None]:
    """:func:`one_cpu_thread` for a matrix under :data:`LARGE_MATRIX` elements, all threads above."""
    if t.numel() >= LARGE_MATRIX:
        yield
        return
    with one_cpu_thread(t.device):
        yield


_ALLOCATOR_TUNED: bool | None = None


def limit_host_allocator_retention(threshold: int = 1 << 20) -> bool:
    """Have glibc return freed blocks of ``threshold`` bytes or more to the system at once.

    glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which
    blocks of that size come from the heap and freed ones are kept for reuse: a pruning run, which
    allocates and frees activation-sized tensors all the time, then holds more than it uses
    (``bench/pipeline_speed.py``, demo model, 16 x 512: peak 1,013 -> 1,023-1,122 MiB for Wanda,
    1,138 -> 1,544-1,566 MiB for SparseGPT in one pass, without this setting). A fixed threshold
    (``mallopt(M_MMAP_THRESHOLD)``) keeps such blocks mmapped, so every new one is page-faulted in
    again: a block's forward pass took 1.3x as long, the whole run 1.06-1.10x (same weights). So
    the pipeline asks for it only when memory is tight (:func:`~prunestudio.core.prune.memory.
    host_memory_tight`; :func:`host_allocator_for_run`). Process-wide, from then on; Linux/glibc only.
    Returns whether it is in effect.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED is not None:
        return _ALLOCATOR_TUNED
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
        except (OSError, AttributeError):
            ok = False
    _ALLOCATOR_TUNED = ok
    return ok


def host_allocator_for_run(tight: bool) -> bool:
    """Before a pruning run: hand freed memory back at once (:func:`limit_host_allocator_retention`)
    when memory is ``tight``, else leave glibc's reuse alone. ``PRUNESTUDIO_MALLOC_TUNING=1``: always
    hand it back; ``=0``: never. Returns whether freed memory is handed back at once."""
    setting = os.environ.get("PRUNESTUDIO_MALLOC_TUNING", "")
    if setting == "0" or (setting != "1" and not tight):
        return bool(_ALLOCATOR_TUNED)
    return limit_host_allocator_retention()
