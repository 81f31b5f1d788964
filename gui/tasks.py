"""The jobs the GUI starts, as plain generators (no Qt), on the engine's one run path.

Every job is a short composition of :mod:`prunestudio.core.run` calls (:func:`iter_load`,
:func:`iter_run`, ...); nothing here prunes, samples or scores by itself. What the window adds is
one marker event, :class:`ModelReady`, so it learns about a (re)loaded model as soon as it exists;
the run's own events (:class:`~prunestudio.core.run.run.DenseMeasured`,
:class:`~prunestudio.core.run.run.PruneFinished`) announce its intermediate results even if a later
step is cancelled.

Rule for the model in memory: pruning changes it in place. Anything that needs the *dense* model
(calibration, similarity, a new run) gets ``loaded=None`` from the window once the model was
pruned or partly pruned, and reloads it from its spec first (:func:`ensure_dense`). The one
exception is the dense perplexity after a complete run (:func:`evaluate_dense_baseline`): it keeps
the pruned model, for export, and takes the number from the dense cache or from a second copy.
A run also reloads a model held otherwise than its offload setting asks (in memory, or with its
blocks on disk).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator

from ..core.calib.calibset import CalibrationSet
from ..core.calib.similarity import score_calibration
from ..core.config import CalibConfig, Recipe
from ..core.errors import ExportError
from ..core.evaluate.zeroshot import iter_zeroshot
from ..core.events import Event, Message, PhaseDone, PhaseStarted
from ..core.model.loading import LoadedModel
from ..core.run.calibration import build_calibration
from ..core.run.evaluation import EvalSettings, iter_dense_baseline, iter_measure, lookup_dense
from ..core.run.export import iter_export
from ..core.run.load import LoadArgs, held_on_disk, iter_load, place_model
from ..core.run.run import DenseMeasured, Evaluation, RunOutcome, iter_run

StopFn = Callable[[], bool]


def _never() -> bool:
    return False


@dataclass(frozen=True)
class ModelReady(Event):
    """A model is in memory (GUI-side marker: the window shows it at once)."""

    loaded: LoadedModel
    tokenizer_fingerprint: str = ""  # computed here, off the GUI thread ("" for a reload)
    weights_signature: str = ""  # of the dense weights, for the dense cache once they are pruned ("": unknown)


def _signature(loaded: LoadedModel) -> str:
    """The dense weights' signature (core/evaluate/ppl_cache.py): it finds their perplexities in the
    dense cache after pruning without the original weights. "" for weights held on disk."""
    from ..core.evaluate.ppl_cache import weights_signature

    return weights_signature(loaded.model) or ""


# ---- jobs ------------------------------------------------------------------------------------
def open_model(args: LoadArgs, should_stop: StopFn = _never) -> Generator[Event, None, LoadedModel]:
    """Step 1's Load button: load, then announce the model with its tokenizer's fingerprint."""
    from ..core.calib.calibset import tokenizer_fingerprint

    loaded = yield from iter_load(args, should_stop)
    yield ModelReady(loaded, tokenizer_fingerprint=tokenizer_fingerprint(loaded.tokenizer),
                     weights_signature=_signature(loaded))
    return loaded


def _reload(args: LoadArgs, why: str, should_stop: StopFn) -> Generator[Event, None, LoadedModel]:
    yield Message(why)
    fresh = yield from iter_load(args, should_stop)
    yield ModelReady(fresh, weights_signature=_signature(fresh))
    return fresh


def ensure_dense(loaded: LoadedModel | None, args: LoadArgs,
                 should_stop: StopFn = _never) -> Generator[Event, None, LoadedModel]:
    """``loaded`` itself, or a fresh load of ``args`` when the window passed None."""
    if loaded is not None:
        return loaded
    return (yield from _reload(args, "The model in memory was pruned; reloading the dense model first.",
                               should_stop))


def calibrate(loaded: LoadedModel | None, args: LoadArgs, cal: CalibConfig,
              should_stop: StopFn = _never) -> Generator[Event, None, CalibrationSet]:
    loaded = yield from ensure_dense(loaded, args, should_stop)
    return (yield from build_calibration(loaded, cal, should_stop))


def open_set(loaded: LoadedModel, path: str, should_stop: StopFn = _never) -> Generator[Event, None, CalibrationSet]:
    """A saved set as it was saved (dropped marks and perplexities kept), checked against the tokenizer."""
    yield PhaseStarted("calibrate", total=1)
    cs = CalibrationSet.load(path, loaded.tokenizer)
    yield Message(f"Opened {Path(path).name}: {len(cs.samples)} samples of {cs.seqlen} tokens")
    return cs


def similarity(loaded: LoadedModel | None, args: LoadArgs, calib: CalibrationSet,
               should_stop: StopFn = _never) -> Generator[Event, None, dict[str, Any]]:
    loaded = yield from ensure_dense(loaded, args, should_stop)
    t0 = time.perf_counter()
    yield PhaseStarted("similarity", total=1)
    place_model(loaded)
    scores = score_calibration(loaded.model, loaded.tokenizer, calib, should_stop=should_stop)
    yield PhaseDone("similarity", time.perf_counter() - t0)
    return scores


def evaluate(loaded: LoadedModel, es: EvalSettings, phase: str,
             should_stop: StopFn = _never) -> Generator[Event, None, float]:
    return (yield from iter_measure(loaded, es, phase, should_stop))


def evaluate_pruned(loaded: LoadedModel, es: EvalSettings, signature: str | None,
                    should_stop: StopFn = _never) -> Generator[Event, None, float]:
    """The pruned model's perplexity, then the dense one with the same settings when the dense cache
    knows it for the original weights (``signature``), so the change is shown with it."""
    ppl = yield from iter_measure(loaded, es, "ppl-pruned", should_stop)
    dense = lookup_dense(signature, loaded, es)
    if dense is not None:
        yield DenseMeasured(es, dense.ppl)
    return ppl


def evaluate_dense_baseline(pruned: LoadedModel, args: LoadArgs, es: EvalSettings, signature: str | None,
                            should_stop: StopFn = _never) -> Generator[Event, None, float]:
    """The dense perplexity while the pruned model stays in memory: from the dense cache, or from a
    second copy of the original model loaded for it and let go (:func:`iter_dense_baseline`)."""
    measured = yield from iter_dense_baseline(pruned, args, es, signature, should_stop)
    yield DenseMeasured(es, measured.ppl)
    return measured.ppl


def evaluate_dense(loaded: LoadedModel | None, args: LoadArgs, es: EvalSettings,
                   should_stop: StopFn = _never) -> Generator[Event, None, float]:
    """The dense model's perplexity (through the dense-perplexity cache, as a run measures it)."""
    loaded = yield from ensure_dense(loaded, args, should_stop)
    ppl = yield from iter_measure(loaded, es, "ppl-dense", should_stop, cache=True)
    yield DenseMeasured(es, ppl)
    return ppl


def zeroshot(loaded: LoadedModel, tasks: list[str], data_dir: str | None, limit: int | None,
             full: bool = False, should_stop: StopFn = _never) -> Generator[Event, None, dict[str, Any]]:
    place_model(loaded)
    return (yield from iter_zeroshot(loaded.model, loaded.tokenizer, tasks, data_dir or None, limit,
                                     should_stop=should_stop, full=full))


@dataclass(frozen=True)
class RunRequest:
    """Step 4's Start button. ``recipe``: the model in memory's spec, device and dtype with the
    settings of steps 2 and 3 (offload included)."""

    recipe: Recipe
    loaded: LoadedModel | None  # None: reload first (the model in memory is not dense)
    calib: CalibrationSet | None
    eval: EvalSettings | None = None
    eval_dense: bool = False
    eval_pruned: bool = False
    cached_dense: float | None = None


def run(req: RunRequest, should_stop: StopFn = _never) -> Generator[Event, None, RunOutcome]:
    """(Reload,) then :func:`~prunestudio.core.run.run.iter_run`: dense perplexity if wanted and not
    cached, prune, pruned perplexity (a cancel there keeps the pruned model), report."""
    args = LoadArgs.of_recipe(req.recipe)
    loaded = req.loaded
    if loaded is not None and held_on_disk(loaded) != args.on_disk:
        loaded = yield from _reload(
            args, "Reloading the model " + ("with its blocks on disk" if args.on_disk else "into memory")
            + f", as offload '{args.offload}' asks.", should_stop)
    loaded = yield from ensure_dense(loaded, args, should_stop)
    evaluation = None
    if req.eval is not None:
        evaluation = Evaluation(req.eval, dense=req.eval_dense, pruned=req.eval_pruned,
                                known_dense=req.cached_dense, keep_pruned_on_cancel=True)
    return (yield from iter_run(loaded, req.recipe, req.calib, evaluation, should_stop))


@dataclass(frozen=True)
class Exported:
    path: Path
    report: dict[str, Any]


def export(outcome: RunOutcome, out_dir: str, overwrite: bool, should_stop: StopFn = _never,
           samples: dict[str, Any] | None = None) -> Generator[Event, None, Exported]:
    """Export the pruned model with a report rebuilt from the latest numbers; ``samples``: the
    dense and pruned texts of the Evaluate step's "try it" pane for the report and the model card
    (:func:`~prunestudio.core.run.samples.samples_report`; None: none)."""
    if outcome.loaded is None:
        raise ExportError("The pruned model of this run is no longer in memory (the dense model was "
                          "reloaded since). Run the pruning again to export it.")
    report = outcome.build_report()
    if samples:
        report["samples"] = samples
    path = yield from iter_export(outcome.loaded.model, outcome.loaded.tokenizer, out_dir, report,
                                  overwrite, should_stop)
    return Exported(Path(path), report)
