"""The command line's whole job: load the model, run the recipe on it, export the result.

:func:`iter_job` strings together :func:`~.load.iter_load`, :func:`~.run.iter_run` and
:func:`~.export.iter_export`. The desktop app and experiment grids keep a model loaded and call
:func:`~.run.iter_run` on it themselves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Generator

from ..config import Recipe
from ..events import Event, Message
from ..model.loading import LoadedModel
from .load import LoadArgs, iter_load
from .report import public_source
from .run import Evaluation, RunOutcome, iter_run

StopFn = Callable[[], bool]


def _never() -> bool:
    return False


@dataclass
class JobResult(RunOutcome):
    """A finished job: the run, and the folder it was exported to (None: not exported)."""

    export_dir: Path | None = None


def iter_job(recipe: Recipe, out_dir: str | Path | None = None, overwrite: bool = False,
             should_stop: StopFn = _never, include_paths: bool = False,
             loaded: LoadedModel | None = None, samples: int = 0) -> Generator[Event, None, JobResult]:
    """Load ``recipe``'s model (unless ``loaded`` is given), run the recipe on it, and export the
    pruned model to ``out_dir`` when one is given, as events. Returns a :class:`JobResult`.

    ``samples``: continue that many of the default prompts (at most 3,
    :data:`~..evaluate.samples.DEFAULT_PROMPTS`) greedily, 64 new tokens, with the dense model
    before pruning and the pruned one after, for the report's and the card's ``samples``.

    A run measures one perplexity set: the recipe's first (a warning names the others)."""
    seconds: dict[str, float] = {}
    if loaded is None:
        t0 = time.perf_counter()
        loaded = yield from iter_load(LoadArgs.of_recipe(recipe), should_stop)
        seconds["load"] = time.perf_counter() - t0
    if len(recipe.eval_ppl) > 1:
        rest = ", ".join(public_source(s, include_paths) for s in recipe.eval_ppl[1:])
        yield Message(f"A run measures one perplexity set, {public_source(recipe.eval_ppl[0], include_paths)}; "
                      f"not evaluated: {rest} (prunestudio eval measures several).", "warning")
    dense_texts: dict[str, str] = {}
    if samples > 0:
        from ..evaluate.samples import DEFAULT_PROMPTS, SampleSettings
        from .samples import iter_compare

        prompts, sample_settings = list(DEFAULT_PROMPTS[:samples]), SampleSettings(64)
        before = yield from iter_compare(prompts, sample_settings, dense=loaded, should_stop=should_stop)
        dense_texts = {p.prompt: p.dense for p in before.pairs if p.dense is not None}
    outcome = yield from iter_run(loaded, recipe, None, Evaluation.of_recipe(recipe), should_stop,
                                  include_paths=include_paths, seconds=seconds)
    res = JobResult(**{f.name: getattr(outcome, f.name) for f in fields(RunOutcome)})
    if samples > 0:
        from .samples import samples_report

        after = yield from iter_compare(prompts, sample_settings, pruned=loaded, known_dense=dense_texts,
                                        should_stop=should_stop)
        kept = samples_report(after)
        if kept:
            res.report["samples"] = kept
    if out_dir is not None:
        from .export import iter_export

        t0 = time.perf_counter()
        res.export_dir = yield from iter_export(loaded.model, loaded.tokenizer, out_dir, res.report, overwrite,
                                                should_stop)
        res.report["seconds"]["export"] = time.perf_counter() - t0
    return res
