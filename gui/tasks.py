"""The jobs the GUI starts, as plain generators (no Qt): each is a short sequence of engine calls.

Nothing here prunes, samples or scores by itself; it only strings the engine's generators together
the way :func:`prunestudio.core.run.job.iter_job` does for the CLI, and adds a few GUI-side marker
events so the window learns about intermediate results (a reloaded model, a dense perplexity,
a finished pruning) as soon as they exist, even if a later step is cancelled.

Rule for the model in memory: pruning changes it in place. Anything that needs the *dense* model
(calibration, similarity, dense evaluation, a new run) gets ``loaded=None`` from the window once
the model was pruned or partly pruned, and reloads it from its spec first (:func:`ensure_dense`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator

from ..core.calib.calibset import CalibrationSet
from ..core.calib.similarity import score_calibration
from ..core.config import CalibConfig, Recipe
from ..core.errors import Cancelled, ExportError
from ..core.evaluate.zeroshot import iter_zeroshot
from ..core.events import Event, Message, PhaseDone, PhaseStarted
from ..core.model.devices import slow_dtype_warning
from ..core.model.loading import LoadedModel, load_model
from ..core.prune.pipeline import PruneResult, iter_prune
from ..core.run.export import iter_export
from ..core.run.job import build_calibration, build_report, iter_eval_ppl, place_model

StopFn = Callable[[], bool]


def _never() -> bool:
    return False


@dataclass(frozen=True)
class LoadArgs:
    spec: str
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False


@dataclass(frozen=True)
class EvalSettings:
    source: str
    seqlen: int = 512
    max_windows: int | None = 32

    def cache_key(self, args: LoadArgs) -> tuple[Any, ...]:
        return (args.spec, args.device, args.dtype, self.source, self.seqlen, self.max_windows)


# ---- GUI-side marker events ------------------------------------------------------------------
@dataclass(frozen=True)
class ModelReady(Event):
    loaded: LoadedModel
    reloaded: bool = False
    tokenizer_fingerprint: str = ""  # computed here, off the GUI thread ("" for a reload)


@dataclass(frozen=True)
class DenseMeasured(Event):
    key: tuple[Any, ...]
    ppl: float


@dataclass(frozen=True)
class PruneFinished(Event):
    result: PruneResult


# ---- jobs ------------------------------------------------------------------------------------
def load(args: LoadArgs, should_stop: StopFn = _never) -> Generator[Event, None, LoadedModel]:
    t0 = time.perf_counter()
    yield PhaseStarted("load", total=1)
    yield Message(f"Loading {args.spec} (device {args.device}, dtype {args.dtype})")
    if should_stop():
        raise Cancelled()
    if args.spec == "demo":
        from ..core.model.demo import iter_fetch_demo_model

        yield from iter_fetch_demo_model(should_stop=should_stop)  # progress, and cancellable
    loaded = load_model(args.spec, args.device, args.dtype, args.trust_remote_code, should_stop=should_stop)
    yield PhaseDone("load", time.perf_counter() - t0)
    info = loaded.info
    yield Message(f"Loaded {loaded.name}: {info.get('architecture')}, {info.get('blocks')} blocks, "
                  f"{info.get('parameters', 0) / 1e6:.1f}M parameters, on {loaded.device}")
    slow = slow_dtype_warning(loaded.device, loaded.dtype)
    if slow:
        yield Message(slow, "warning")
    return loaded


def open_model(args: LoadArgs, should_stop: StopFn = _never) -> Generator[Event, None, LoadedModel]:
    """Step 1's Load button: load, then announce the model with its tokenizer's fingerprint."""
    from ..core.calib.calibset import tokenizer_fingerprint

    loaded = yield from load(args, should_stop)
    yield ModelReady(loaded, reloaded=False, tokenizer_fingerprint=tokenizer_fingerprint(loaded.tokenizer))
    return loaded


def ensure_dense(loaded: LoadedModel | None, args: LoadArgs,
                 should_stop: StopFn = _never) -> Generator[Event, None, LoadedModel]:
    """``loaded`` itself, or a fresh load of ``args`` when the window passed None."""
    if loaded is not None:
        return loaded
    yield Message("The model in memory was pruned; reloading the dense model first.")
    fresh = yield from load(args, should_stop)
    yield ModelReady(fresh, reloaded=True)
    return fresh


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
    return (yield from iter_eval_ppl(loaded, es.source, es.seqlen, should_stop, phase, es.max_windows))


def evaluate_dense(loaded: LoadedModel | None, args: LoadArgs, es: EvalSettings,
                   should_stop: StopFn = _never) -> Generator[Event, None, float]:
    loaded = yield from ensure_dense(loaded, args, should_stop)
    ppl = yield from evaluate(loaded, es, "ppl-dense", should_stop)
    yield DenseMeasured(es.cache_key(args), ppl)
    return ppl


def zeroshot(loaded: LoadedModel, tasks: list[str], data_dir: str | None, limit: int | None,
             should_stop: StopFn = _never) -> Generator[Event, None, dict[str, Any]]:
    place_model(loaded)
    return (yield from iter_zeroshot(loaded.model, loaded.tokenizer, tasks, data_dir or None, limit,
                                     should_stop=should_stop))


@dataclass
class RunRequest:
    args: LoadArgs
    recipe: Recipe
    loaded: LoadedModel | None  # None: reload first (the model in memory is not dense)
    calib: CalibrationSet | None
    eval: EvalSettings | None = None
    eval_dense: bool = False
    eval_pruned: bool = False
    cached_dense: float | None = None


@dataclass
class RunOutcome:
    loaded: LoadedModel | None  # the pruned model; None once the window dropped it for a reload
    recipe: Recipe
    calib: CalibrationSet | None
    result: PruneResult
    ppl_dense: float | None
    ppl_pruned: float | None
    seconds: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    eval: EvalSettings | None = None  # what ppl_dense / ppl_pruned were measured with


def run(req: RunRequest, should_stop: StopFn = _never) -> Generator[Event, None, RunOutcome]:
    """(Reload,) dense perplexity if wanted and not cached, prune, pruned perplexity, report."""
    seconds: dict[str, float] = {}
    loaded = yield from ensure_dense(req.loaded, req.args, should_stop)
    prune_cfg = req.recipe.prune
    # a private copy: the report must describe the samples this run used, whatever is edited later
    calib = req.calib.copy() if prune_cfg.needs_calibration and req.calib is not None else None
    ids = calib.input_ids() if calib is not None else None

    ppl_dense = req.cached_dense
    if req.eval is not None and req.eval_dense and ppl_dense is None:
        t0 = time.perf_counter()
        ppl_dense = yield from evaluate(loaded, req.eval, "ppl-dense", should_stop)
        seconds["eval_dense"] = time.perf_counter() - t0
        yield DenseMeasured(req.eval.cache_key(req.args), ppl_dense)
        yield Message(f"Dense perplexity: {ppl_dense:.3f}")

    result = yield from iter_prune(loaded.model, ids, prune_cfg, loaded.device, should_stop)
    yield PruneFinished(result)

    ppl_pruned = None
    if req.eval is not None and req.eval_pruned:
        t0 = time.perf_counter()
        try:
            ppl_pruned = yield from evaluate(loaded, req.eval, "ppl-pruned", should_stop)
            seconds["eval_pruned"] = time.perf_counter() - t0
            yield Message(f"Pruned perplexity: {ppl_pruned:.3f}")
        except Cancelled:
            yield Message("Evaluation of the pruned model cancelled; the pruned model is kept.", "warning")
    report = build_report(loaded, req.recipe, calib, result, ppl_dense, ppl_pruned, seconds)
    return RunOutcome(loaded, req.recipe, calib, result, ppl_dense, ppl_pruned, seconds, report, req.eval)


@dataclass(frozen=True)
class Exported:
    path: Path
    report: dict[str, Any]


def export(outcome: RunOutcome, out_dir: str, overwrite: bool,
           should_stop: StopFn = _never) -> Generator[Event, None, Exported]:
    """Export the pruned model with a report rebuilt from the latest numbers."""
    if outcome.loaded is None:
        raise ExportError("The pruned model of this run is no longer in memory (the dense model was "
                          "reloaded since). Run the pruning again to export it.")
    report = build_report(outcome.loaded, outcome.recipe, outcome.calib, outcome.result,
                          outcome.ppl_dense, outcome.ppl_pruned, outcome.seconds)
    path = yield from iter_export(outcome.loaded.model, outcome.loaded.tokenizer, out_dir, report,
                                  overwrite, should_stop)
    return Exported(Path(path), report)
