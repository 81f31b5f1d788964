"""Running a recipe on a loaded model: the one sequence every job follows.

    check the recipe -> calibration set (reused or built) -> dense perplexity -> prune -> pruned
    perplexity -> report

The command line (:func:`~prunestudio.core.run.job.iter_job`), the desktop app's run job and every
cell of an experiment grid call :func:`iter_run`; it changes the model in place (pruning).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator

from ..calib.calibset import CalibrationSet
from ..config import Recipe
from ..errors import CalibrationError, Cancelled
from ..events import Event, Message
from ..model.loading import LoadedModel
from ..model.threads import ThreadChoice, job_threads
from ..model.threads import active as threads_active
from ..prune.pipeline import iter_prune
from ..prune.result import PruneResult
from .calibration import build_calibration
from .checks import validate_recipe
from .evaluation import EvalSettings, iter_measure_full
from .report import build_report

StopFn = Callable[[], bool]


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Evaluation:
    """The perplexity a run measures, and when.

    ``known_dense``: a dense perplexity already measured with ``settings`` on these weights; it is
    reported and not measured again. ``keep_pruned_on_cancel``: a cancel during the pruned model's
    evaluation ends the run without that number (the pruned model is kept) instead of cancelling it.
    """

    settings: EvalSettings
    dense: bool = True
    pruned: bool = True
    known_dense: float | None = None
    keep_pruned_on_cancel: bool = False

    @classmethod
    def of_recipe(cls, recipe: Recipe) -> "Evaluation | None":
        """Dense and pruned perplexity on the recipe's evaluation set (None when it names none)."""
        settings = EvalSettings.of_recipe(recipe)
        return cls(settings) if settings is not None else None


@dataclass(frozen=True)
class DenseMeasured(Event):
    """The dense model's perplexity with ``settings``, as soon as it is known."""

    settings: EvalSettings
    ppl: float


@dataclass(frozen=True)
class PruneFinished(Event):
    """The model is pruned (whatever happens to the evaluation after it)."""

    result: PruneResult


@dataclass
class RunOutcome:
    """A finished run. ``loaded`` holds the pruned model (None once a caller let it go);
    ``evaluation`` the settings ``ppl_dense`` / ``ppl_pruned`` were measured with, ``windows`` the
    number of windows they read (None: unknown, e.g. a dense number given by the caller alone);
    ``threads`` the torch threads the run used and why."""

    loaded: LoadedModel | None
    recipe: Recipe
    calibration: CalibrationSet | None
    result: PruneResult
    ppl_dense: float | None
    ppl_pruned: float | None
    seconds: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    evaluation: EvalSettings | None = None
    windows: int | None = None
    threads: ThreadChoice | None = None

    def build_report(self, include_paths: bool = False) -> dict[str, Any]:
        """The report of this run with its current numbers (the model must still be in memory)."""
        assert self.loaded is not None
        return build_report(self.loaded, self.recipe, self.calibration, self.result, self.ppl_dense,
                            self.ppl_pruned, self.seconds, include_paths, self.evaluation,
                            self.windows, self.threads)


def iter_run(loaded: LoadedModel, recipe: Recipe, calibration: CalibrationSet | None = None,
             evaluation: Evaluation | None = None, should_stop: StopFn = _never, *,
             include_paths: bool = False,
             seconds: dict[str, float] | None = None) -> Generator[Event, None, RunOutcome]:
    """Run ``recipe`` on ``loaded`` (pruned in place), as events; returns the :class:`RunOutcome`.

    The run uses the torch threads that fit the machine when it starts
    (:func:`~prunestudio.core.model.threads.job_threads`; said in a :class:`Message` and recorded in
    the report's ``threads``), and restores the previous count when it ends. Otherwise as
    :func:`_iter_run`.
    """
    validate_recipe(loaded, recipe)  # refused before anything else, a thread choice included
    outer = threads_active() is None
    with job_threads() as choice:
        if outer:
            yield Message(f"Threads: {choice.reason}")
        return (yield from _iter_run(loaded, recipe, calibration, evaluation, should_stop,
                                     include_paths=include_paths, seconds=seconds, thread_choice=choice))


def _iter_run(loaded: LoadedModel, recipe: Recipe, calibration: CalibrationSet | None = None,
              evaluation: Evaluation | None = None, should_stop: StopFn = _never, *,
              include_paths: bool = False, seconds: dict[str, float] | None = None,
              thread_choice: ThreadChoice | None = None) -> Generator[Event, None, RunOutcome]:
    """Run ``recipe`` on ``loaded`` (pruned in place), as events; returns the :class:`RunOutcome`.

    The recipe was checked against the model (:func:`validate_recipe`) by :func:`iter_run`. A method that needs
    calibration data uses a copy of ``calibration`` when given (later edits of the set do not change
    what the run reports), or builds the set the recipe describes. ``evaluation`` (None: no
    perplexity) says what to measure; the dense perplexity goes through the on-disk dense cache.
    ``seconds``: timings of earlier steps (the load) for the report; ``include_paths``: keep local
    paths in the report.
    """
    seconds = dict(seconds or {})

    calib: CalibrationSet | None = None
    if recipe.prune.needs_calibration:
        if calibration is not None:
            calib = calibration.copy()
            if len(calib) == 0:
                raise CalibrationError("The calibration set has no samples left; keep or add some first.")
        else:
            t0 = time.perf_counter()
            calib = yield from build_calibration(loaded, recipe.calibration, should_stop)
            seconds["calibration"] = time.perf_counter() - t0
            if len(calib) == 0:
                raise CalibrationError("No calibration samples were produced.")

    settings = evaluation.settings if evaluation is not None else None
    ppl_dense = evaluation.known_dense if evaluation is not None else None
    windows: int | None = None
    if evaluation is not None and evaluation.dense and ppl_dense is None:
        t0 = time.perf_counter()
        measured = yield from iter_measure_full(loaded, evaluation.settings, "ppl-dense", should_stop, cache=True)
        ppl_dense, windows = measured.ppl, measured.windows
        seconds["eval_dense"] = time.perf_counter() - t0
        yield DenseMeasured(evaluation.settings, ppl_dense)
        yield Message(f"Dense perplexity: {ppl_dense:.3f}")

    ids = calib.input_ids() if calib is not None else None
    result = yield from iter_prune(loaded.model, ids, recipe.prune, loaded.device, should_stop)
    yield PruneFinished(result)

    ppl_pruned = None
    if evaluation is not None and evaluation.pruned:
        t0 = time.perf_counter()
        try:
            measured = yield from iter_measure_full(loaded, evaluation.settings, "ppl-pruned", should_stop)
            ppl_pruned, windows = measured.ppl, measured.windows
            seconds["eval_pruned"] = time.perf_counter() - t0
            yield Message(f"Pruned perplexity: {ppl_pruned:.3f}")
        except Cancelled:
            if not evaluation.keep_pruned_on_cancel:
                raise
            yield Message("Evaluation of the pruned model cancelled; the pruned model is kept.", "warning")

    outcome = RunOutcome(loaded, recipe, calib, result, ppl_dense, ppl_pruned, seconds, {}, settings, windows,
                         thread_choice)
    outcome.report = outcome.build_report(include_paths)
    return outcome
