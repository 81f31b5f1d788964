"""The self-generation job, whichever protocol the settings name (``GenerationSettings.protocol``):
``windows`` (:mod:`.generate`, Prune Studio's default, zero-data or with prefixes) or ``paper``
(:mod:`.paper`, Ji et al.'s protocol). Callers use these two functions and never pick a module."""

from __future__ import annotations

from typing import Any, Callable, Generator, Iterable

from ...events import Event, run_to_completion
from ..calibset import CalibrationSet
from .generate import iter_generate as iter_generate_windows
from .paper import iter_generate_paper
from .settings import GenerationSettings

__all__ = ["iter_generate", "generate_calibration_set"]


def iter_generate(
    model: Any,
    tokenizer: Any,
    settings: GenerationSettings,
    prefixes: Iterable[str] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    source_name: str | None = None,
) -> Generator[Event, None, CalibrationSet]:
    """Generate a self-generated calibration set with ``settings.protocol``, yielding progress
    events (the same kinds for both protocols, so that any view shows either live); returns the
    :class:`CalibrationSet`, whose ``settings["protocol"]`` says which protocol made it."""
    if settings.protocol == "paper":
        return (yield from iter_generate_paper(model, tokenizer, settings, prefixes, should_stop, source_name))
    return (yield from iter_generate_windows(model, tokenizer, settings, prefixes, should_stop, source_name))


def generate_calibration_set(
    model: Any,
    tokenizer: Any,
    settings: GenerationSettings,
    prefixes: Iterable[str] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    source_name: str | None = None,
) -> CalibrationSet:
    """:func:`iter_generate` without the events."""
    return run_to_completion(iter_generate(model, tokenizer, settings, prefixes, should_stop, source_name))
