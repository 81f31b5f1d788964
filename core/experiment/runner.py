"""Running an experiment grid: every pending cell through the one run path, resumable.

One model is loaded for the whole grid (:func:`~prunestudio.core.run.load.iter_load`); every cell
starts from a copy of its original weights. A pruned cell is :func:`~prunestudio.core.run.run.iter_run`
with no perplexity of its own: a calibration set already built for the same calibration settings is
handed to it again (the sparsity settings of a grid share their sets, and self-generation is the
expensive part of a cell on a CPU). Then every cell, the dense baseline included, is measured on
the grid's perplexity sets and zero-shot tasks, stored in the run history under its key, and the
summary files are rewritten.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Generator

from ..calib.calibset import CalibrationSet
from ..events import Event, Message, PhaseDone, PhaseProgress, PhaseStarted, run_to_completion
from ..model.loading import LoadedModel
from ..run.history import History
from ..run.load import LoadArgs, iter_load, place_model
from ..run.report import add_perplexities, add_zeroshot, dense_report, suite_eval
from ..run.run import iter_run
from .grid import DENSE, Cell, GridSpec
from .summary import cell_metrics, write_summary

StopFn = Callable[[], bool]

_KEEP_SETS = 16  # calibration sets kept for reuse (the oldest goes first)


@dataclass(frozen=True)
class CellStarted(Event):
    index: int
    total: int
    description: str
    key: str


@dataclass(frozen=True)
class CellSkipped(Event):
    index: int
    total: int
    description: str
    key: str


@dataclass(frozen=True)
class CellFinished(Event):
    index: int
    total: int
    description: str
    key: str
    metrics: dict[str, float | None]
    seconds: float


@dataclass
class ExperimentResult:
    executed: int
    skipped: int
    cells: list[Cell]
    db_path: Path
    files: dict[str, Path]


def default_db(out_dir: str | Path) -> Path:
    return Path(out_dir) / "history.sqlite3"


def iter_experiment(spec: GridSpec, out_dir: str | Path, db_path: str | Path | None = None,
                    dry_run: bool = False,
                    should_stop: StopFn = lambda: False) -> Generator[Event, None, ExperimentResult]:
    """Run every pending cell of ``spec``; write the summary after each cell. Returns counts.
    ``dry_run``: list the cells, done or pending, and run nothing."""
    out = Path(out_dir)
    db = Path(db_path) if db_path is not None else default_db(out)
    cells = spec.cells()
    if dry_run:
        hist = History(db) if db.exists() else None
        for i, c in enumerate(cells):
            done = hist is not None and hist.has_key(c.key)
            yield Message(f"[{i + 1}/{len(cells)}] {'done   ' if done else 'pending'} {c.describe()}  {c.key[:12]}")
        return ExperimentResult(0, 0, cells, db, {})
    out.mkdir(parents=True, exist_ok=True)
    hist = History(db)
    runner: _Runner | None = None
    executed = skipped = 0
    files: dict[str, Path] = {}
    yield PhaseStarted("experiment", total=len(cells))
    t_all = time.perf_counter()
    for i, cell in enumerate(cells):
        if hist.has_key(cell.key):
            skipped += 1
            yield CellSkipped(i, len(cells), cell.describe(), cell.key)
            continue
        if runner is None:
            runner = _Runner(spec)
            yield from runner.load(should_stop)
        yield CellStarted(i, len(cells), cell.describe(), cell.key)
        t0 = time.perf_counter()
        report = yield from runner.run_cell(cell, should_stop)
        report["seconds"]["cell"] = report["seconds"]["total"] = time.perf_counter() - t0
        hist.add(report, None, key=cell.key)
        executed += 1
        yield CellFinished(i, len(cells), cell.describe(), cell.key, cell_metrics(report, spec.eval),
                           time.perf_counter() - t0)
        files = write_summary(spec, hist, out)
        yield PhaseProgress("experiment", i + 1, len(cells))
    files = write_summary(spec, hist, out)
    yield PhaseDone("experiment", time.perf_counter() - t_all)
    return ExperimentResult(executed, skipped, cells, db, files)


def run_experiment(spec: GridSpec, out_dir: str | Path, db_path: str | Path | None = None,
                   on_event: Callable[[Event], None] | None = None, **kw: Any) -> ExperimentResult:
    return run_to_completion(iter_experiment(spec, out_dir, db_path, **kw), on_event)


class _Runner:
    """One loaded model; every cell starts from a copy of its original weights."""

    def __init__(self, spec: GridSpec) -> None:
        self.spec = spec
        self.loaded: LoadedModel | None = None
        self.original: dict[str, Any] = {}
        self._ids: dict[str, Any] = {}
        self._calib: dict[str, CalibrationSet] = {}

    def load(self, should_stop: StopFn) -> Generator[Event, None, None]:
        spec = self.spec
        model = spec.model if spec.model == "demo" else (spec.resolve(spec.model) or spec.model)
        self.loaded = yield from iter_load(LoadArgs(model, spec.device, spec.dtype, spec.trust_remote_code),
                                           should_stop)
        self.original = {k: v.detach().clone() for k, v in self.loaded.model.state_dict().items()}

    def restore(self) -> None:
        """The original weights again, whatever an earlier cell pruned (or half pruned)."""
        from ..prune.result import mark_incomplete

        assert self.loaded is not None
        self.loaded.model.load_state_dict(self.original)
        mark_incomplete(self.loaded.model, False)

    def eval_ids(self, suite: str) -> Any:
        from ..evaluate.perplexity import eval_ids
        from ..evaluate.ppl_suites import is_suite

        assert self.loaded is not None
        if suite not in self._ids:
            ev = self.spec.eval
            data = self.spec.resolve(ev.ppl_data) if ev.ppl_data else None
            src = suite if is_suite(suite) or suite.startswith("hf:") else (self.spec.resolve(suite) or suite)
            self._ids[suite] = eval_ids(self.loaded.tokenizer, src, ev.seqlen, data)
        return self._ids[suite]

    def run_cell(self, cell: Cell, should_stop: StopFn) -> Generator[Event, None, dict[str, Any]]:
        assert self.loaded is not None
        self.restore()
        if cell.kind == DENSE:
            report = dense_report(self.loaded, cell.recipe)
        else:
            report = yield from self._prune(cell, should_stop)
        place_model(self.loaded)
        yield from self._evaluate(report, should_stop)
        report["experiment"] = {"name": self.spec.name, "key": cell.key, "kind": cell.kind,
                                "source_label": cell.source_label, "method": cell.method,
                                "setting": cell.setting, "seed": cell.seed}
        return report

    def _prune(self, cell: Cell, should_stop: StopFn) -> Generator[Event, None, dict[str, Any]]:
        """The cell's run, handed the calibration set of an earlier cell with the same calibration
        settings when there is one; a set built here is kept for the cells after it."""
        assert self.loaded is not None
        recipe = cell.recipe
        reused = None
        ck = json.dumps(asdict(recipe.calibration), sort_keys=True, default=list)
        if recipe.prune.needs_calibration:
            reused = self._calib.get(ck)
            if reused is not None:
                yield Message(f"Calibration set reused ({len(reused)} samples from {cell.source_label}, "
                              f"seed {cell.seed})")
        outcome = yield from iter_run(self.loaded, recipe, reused, None, should_stop)
        if reused is None and outcome.calibration is not None:
            while len(self._calib) >= _KEEP_SETS:
                self._calib.pop(next(iter(self._calib)))
            self._calib[ck] = outcome.calibration
        outcome.report["calibration_reused"] = reused is not None
        return outcome.report

    def _evaluate(self, report: dict[str, Any], should_stop: StopFn) -> Generator[Event, None, None]:
        """The grid's perplexity sets and zero-shot tasks, into ``report``."""
        from ..evaluate.perplexity import iter_perplexity
        from ..evaluate.zeroshot import iter_zeroshot

        assert self.loaded is not None
        ev, loaded = self.spec.eval, self.loaded
        ppl: dict[str, float] = {}
        windows: dict[str, int] = {}
        for suite in ev.ppl:
            t0 = time.perf_counter()
            ids = self.eval_ids(suite)
            ppl[suite] = yield from iter_perplexity(loaded.model, ids, ev.seqlen, batch_size=ev.ppl_batch_size,
                                                    max_windows=ev.max_windows, device=loaded.device,
                                                    should_stop=should_stop, phase=f"ppl:{suite}")
            n = ids.numel() // ev.seqlen
            windows[suite] = min(n, ev.max_windows) if ev.max_windows else n
            report["seconds"][f"ppl_{suite}"] = time.perf_counter() - t0
            yield Message(f"perplexity {suite}: {ppl[suite]:.3f}")
        report["eval"] = suite_eval(ev.ppl, ev.seqlen, ev.max_windows, windows, ev.tasks, ev.limit)
        add_perplexities(report, ppl)
        if ev.tasks:
            t0 = time.perf_counter()
            data = self.spec.resolve(ev.task_data) if ev.task_data else None
            res = yield from iter_zeroshot(loaded.model, loaded.tokenizer, list(ev.tasks), data, ev.limit,
                                           ev.batch_size, should_stop)
            add_zeroshot(report, res)
            report["seconds"]["zeroshot"] = time.perf_counter() - t0
            yield Message(f"zero-shot mean accuracy: {report['tasks_mean_acc']:.4f} "
                          f"({', '.join(f'{k} {v.acc:.3f}' for k, v in res.items())})")
