"""Buffers a model built on the meta device is missing after its weights are loaded."""

from __future__ import annotations

from typing import Any

__all__ = ["rebuild_meta_buffers"]


def rebuild_meta_buffers(model: Any) -> None:
    """Rebuild non-persistent buffers (rotary ``inv_freq``) left on the meta device.

    Modules built on the meta device keep meta buffers that no state dict carries; re-creating
    such a module from its config on the CPU gives the right values, whatever its rope type.
    """
    for mod in model.modules():
        meta = [n for n, b in mod.named_buffers(recurse=False) if b.is_meta]
        if not meta or not hasattr(mod, "config"):
            continue
        fresh = type(mod)(mod.config)
        for n in meta:
            setattr(mod, n, getattr(fresh, n))
        for attr in ("attention_scaling",):
            if hasattr(fresh, attr):
                setattr(mod, attr, getattr(fresh, attr))
