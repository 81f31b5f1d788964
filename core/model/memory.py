"""Memory facts that do not depend on what is done with a model: what the machine has free now, what
one token of a model's KV cache costs, and how to print a byte count."""

from __future__ import annotations

from typing import Any

__all__ = ["available_memory", "kv_cache_bytes_per_token", "format_bytes"]


def kv_cache_bytes_per_token(config: Any, dtype_bytes: int) -> int | None:
    """Bytes of KV cache one token of one sequence takes while decoding: keys and values of every
    layer (``layers x 2 x kv_heads x head_dim x dtype``), or None when the config does not say."""
    def first(*names: str) -> int | None:
        for name in names:
            v = getattr(config, name, None)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
        return None

    layers = first("num_hidden_layers", "n_layer", "num_layers")
    heads = first("num_attention_heads", "n_head")
    kv_heads = first("num_key_value_heads", "multi_query_group_num") or heads
    hidden = first("hidden_size", "n_embd", "d_model")
    head_dim = first("head_dim") or (hidden // heads if hidden and heads else None)
    if not (layers and kv_heads and head_dim):
        return None
    return layers * 2 * kv_heads * head_dim * dtype_bytes


def available_memory(device: str = "cpu") -> dict[str, int | None]:
    """What the machine has now: host RAM available and, for a CUDA device, free GPU memory."""
    out: dict[str, int | None] = {"host_available": None, "host_total": None,
                                  "device_free": None, "device_total": None}
    try:
        import psutil

        vm = psutil.virtual_memory()
        out["host_available"], out["host_total"] = int(vm.available), int(vm.total)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported platform
        pass
    if str(device).startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                dev = torch.device(device)
                free, total = torch.cuda.mem_get_info(dev.index if dev.index is not None else 0)
                out["device_free"], out["device_total"] = int(free), int(total)
        except Exception:  # noqa: BLE001
            pass
    return out


def format_bytes(n: float | None) -> str:
    """``1536`` -> ``1.5 KiB``; None -> ``unknown``."""
    if n is None:
        return "unknown"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
