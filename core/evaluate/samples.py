"""Continuing a prompt with a model, to read what pruning did to its text.

:func:`iter_continue` writes one continuation as events (:class:`SampleProgress` while it writes,
:class:`SampleWritten` at the end). The decoding is self-generation's sampler
(:func:`~prunestudio.core.calib.selfgen.sampler.iter_sample_tokens`): its random numbers come from
the seed alone, one per step, so two models given the same prompt, seed and settings draw the same
numbers and differ only where their distributions do. Greedy decoding (``temperature`` 0) takes the
most likely token at every step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Generator

from ..calib.selfgen.prompts import end_of_text_ids
from ..calib.selfgen.sampler import iter_sample_tokens
from ..calib.selfgen.settings import GenerationSettings
from ..errors import ConfigError
from ..events import Event

__all__ = ["SampleSettings", "SampleProgress", "SampleWritten", "iter_continue", "DEFAULT_PROMPTS"]

# The prompts the model card's samples use when nobody chose any: plain text any base or instruct
# model can continue, short enough for a small context.
DEFAULT_PROMPTS = (
    "The capital of France is",
    "Here is a short story about a robot who learns to paint:",
    "def fibonacci(n):",
)


@dataclass(frozen=True)
class SampleSettings:
    """How a continuation is decoded: at most ``max_new_tokens`` new tokens; ``temperature`` 0 is
    greedy (``seed`` and ``top_p`` then change nothing), above 0 samples with ``top_p`` from the
    random stream ``seed`` gives; ``repetition_penalty`` 1 is none."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        def num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or not 1 <= self.max_new_tokens <= 4096:
            raise ConfigError("The number of new tokens must be a whole number from 1 to 4096, "
                              f"got {self.max_new_tokens!r}.")
        if not num(self.temperature) or self.temperature < 0:
            raise ConfigError(f"The temperature must be 0 (greedy) or more, got {self.temperature!r}.")
        if not num(self.top_p) or not 0 < self.top_p <= 1:
            raise ConfigError(f"Top-p must be above 0 and at most 1, got {self.top_p!r}.")
        if not num(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise ConfigError(f"The repetition penalty must be above 0 (1 = none), got {self.repetition_penalty!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"The seed must be a whole number, got {self.seed!r}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def describe(self) -> str:
        """"greedy, up to 64 new tokens" or "temperature 0.7, top-p 0.9, seed 1, up to 64 new tokens"."""
        how = "greedy" if self.greedy else (f"temperature {self.temperature:g}, top-p {self.top_p:g}, "
                                            f"seed {self.seed}")
        if self.repetition_penalty != 1:
            how += f", repetition penalty {self.repetition_penalty:g}"
        return f"{how}, up to {self.max_new_tokens} new tokens"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _sampler_settings(self) -> GenerationSettings:
        # greedy = keep the one most likely candidate (top-k 1), whatever the random number
        return GenerationSettings(
            n=1, seqlen=2, prefix_tokens=0, batch_size=1, seed=self.seed,
            temperature=1.0 if self.greedy else float(self.temperature),
            top_k=1 if self.greedy else 0, top_p=1.0 if self.greedy else float(self.top_p),
            repetition_penalty=float(self.repetition_penalty))


@dataclass(frozen=True)
class SampleProgress(Event):
    """A continuation being written: ``which`` model ("dense", "pruned"), tokens written of at most
    ``total``, and the text so far (without the prompt)."""

    which: str
    done: int
    total: int
    text: str


@dataclass(frozen=True)
class SampleWritten(Event):
    """A finished continuation of ``prompt`` by ``which`` model: the new text alone, the number of
    new tokens, and whether it ended at an end-of-text token before the limit."""

    which: str
    prompt: str
    text: str
    tokens: int
    ended: bool


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt's tokens as the model reads them (with the tokenizer's start token, if it adds one)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("Write a prompt for the model to continue.")
    ids = list(tokenizer(prompt)["input_ids"])
    if not ids:
        raise ConfigError("The prompt has no tokens for this tokenizer; write some text.")
    return [int(i) for i in ids]


def iter_continue(model: Any, tokenizer: Any, prompt: str, settings: SampleSettings, which: str = "model",
                  should_stop: Callable[[], bool] = lambda: False) -> Generator[Event, None, SampleWritten]:
    """Continue ``prompt`` with ``model`` (on its own device) as ``settings`` say; yields
    :class:`SampleProgress` after each token and the :class:`SampleWritten` it returns. Stops at
    an end-of-text token; raises :class:`~prunestudio.core.errors.Cancelled` between tokens when
    ``should_stop()``."""
    ids = prompt_ids(tokenizer, prompt)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and len(ids) + settings.max_new_tokens > limit:
        raise ConfigError(f"The prompt ({len(ids)} tokens) and {settings.max_new_tokens} new tokens exceed the "
                          f"model's context of {limit} tokens; shorten the prompt or ask for fewer tokens.")
    total = settings.max_new_tokens
    gen = iter_sample_tokens(model, [ids], len(ids) + total, settings._sampler_settings(), [settings.seed],
                             pad_id=0, should_stop=should_stop, stop_ids=end_of_text_ids(model, tokenizer))
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            tokens = stop.value[0][0]
            break
        new = step.generated[0].tolist()
        yield SampleProgress(which, step.done, total, tokenizer.decode(new, skip_special_tokens=True))
    new = tokens[len(ids):]
    stops = set(end_of_text_ids(model, tokenizer))
    ended = bool(new) and new[-1] in stops and len(new) <= total
    written = SampleWritten(which, prompt, tokenizer.decode(new, skip_special_tokens=True), len(new), ended)
    yield written
    return written
