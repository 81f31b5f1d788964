"""One loaded model on which cells run, each from a copy of the original weights.

The local executor keeps one :class:`CellRunner` for the whole grid; a Ray worker keeps one per
process for the cells it is given (:mod:`.ray_tasks`). A pruned cell is
:func:`~prunestudio.core.run.run.iter_run` with no perplexity of its own, handed a calibration set
already built for the same calibration settings when there is one (the one given by the caller, or
one an earlier cell of this runner built, or one an earlier run of the grid saved in the results
folder's ``calibration/``); then every cell, the dense baseline included, is measured on the grid's
perplexity sets and zero-shot tasks.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Generator

from ..calib.calibset import CalibrationSet
from ..errors import CalibrationError
from ..events import Event, Message
from ..model.loading import LoadedModel
from ..run.load import LoadArgs, iter_load, place_model
from ..run.report import add_perplexities, add_zeroshot, dense_report, suite_eval
from ..run.run import iter_run
from .grid import DENSE, Cell, GridSpec

StopFn = Callable[[], bool]

_KEEP_SETS = 16  # calibration sets kept for reuse (the oldest goes first)


def calibration_key(cell: Cell) -> str:
    """The cells with equal keys share one calibration set (their calibration settings are equal)."""
    return json.dumps(asdict(cell.recipe.calibration), sort_keys=True, default=list)


class CellRunner:
    """One loaded model; every cell starts from a copy of its original weights."""

    def __init__(self, spec: GridSpec, calib_dir: str | Path | None = None) -> None:
        """``calib_dir``: where the calibration sets this runner builds are saved, and read back
        by a later run of the grid (a resumed grid does not write its self-generated sets again);
        None: kept in memory only."""
        self.spec = spec
        self.calib_dir = Path(calib_dir) if calib_dir is not None else None
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

    def run_cell(self, cell: Cell, should_stop: StopFn,
                 calibration: CalibrationSet | None = None) -> Generator[Event, None, dict[str, Any]]:
        """The cell's report. ``calibration``: the set to prune with (built elsewhere for the cell's
        calibration settings); None: one an earlier cell of this runner built, or a new one."""
        assert self.loaded is not None
        self.restore()
        if cell.kind == DENSE:
            report = dense_report(self.loaded, cell.recipe)
        else:
            report = yield from self._prune(cell, should_stop, calibration)
        place_model(self.loaded)
        yield from self._evaluate(report, should_stop)
        report["experiment"] = {"name": self.spec.name, "key": cell.key, "kind": cell.kind,
                                "source_label": cell.source_label, "method": cell.method,
                                "setting": cell.setting, "seed": cell.seed}
        return report

    def _prune(self, cell: Cell, should_stop: StopFn,
               given: CalibrationSet | None = None) -> Generator[Event, None, dict[str, Any]]:
        """The cell's run, handed ``given``, else the calibration set of an earlier cell with the
        same calibration settings when there is one; a set built here is kept for the cells after it."""
        assert self.loaded is not None
        recipe = cell.recipe
        reused = None
        ck = calibration_key(cell)
        if recipe.prune.needs_calibration:
            reused = given if given is not None else self._calib.get(ck)
            if reused is not None:
                yield Message(f"Calibration set reused ({len(reused)} samples from {cell.source_label}, "
                              f"seed {cell.seed})")
            else:
                reused = yield from self._read_saved(ck, cell)
        outcome = yield from iter_run(self.loaded, recipe, reused, None, should_stop)
        if outcome.calibration is not None and ck not in self._calib:
            while len(self._calib) >= _KEEP_SETS:
                self._calib.pop(next(iter(self._calib)))
            self._calib[ck] = outcome.calibration
        if reused is None and outcome.calibration is not None:
            yield from self._save(ck, outcome.calibration)
        outcome.report["calibration_reused"] = reused is not None
        return outcome.report

    def saved_set_path(self, ck: str) -> Path | None:
        """The file of the set with calibration key ``ck`` for this grid's model, dtype and device
        (a self-generated set depends on all three), or None without a folder."""
        if self.calib_dir is None:
            return None
        spec = self.spec
        ident = json.dumps([ck, spec.model, str(spec.base_dir), spec.device, spec.dtype], default=str)
        return self.calib_dir / f"{hashlib.sha256(ident.encode()).hexdigest()[:20]}.calib.jsonl"

    def _read_saved(self, ck: str, cell: Cell) -> Generator[Event, None, CalibrationSet | None]:
        """The set an earlier run saved for ``ck``, or None (none saved, or one that cannot be read:
        then it is built again and the file replaced)."""
        path = self.saved_set_path(ck)
        if path is None or not path.is_file():
            return None
        assert self.loaded is not None
        try:
            calib = CalibrationSet.load(path, self.loaded.tokenizer)
        except CalibrationError as e:
            yield Message(f"{e} Building the set again.")
            return None
        if len(calib) == 0:
            return None
        yield Message(f"Calibration set read from {path.name} ({len(calib)} samples from {cell.source_label}, "
                      f"seed {cell.seed}, saved by an earlier run of this grid)")
        return calib

    def _save(self, ck: str, calib: CalibrationSet) -> Generator[Event, None, None]:
        path = self.saved_set_path(ck)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            calib.save(path)
        except OSError as e:
            yield Message(f"The calibration set could not be saved for a later run ({e.strerror or e}); "
                          "the grid goes on.")

    def build_calibration(self, cell: Cell, should_stop: StopFn) -> Generator[Event, None, CalibrationSet]:
        """The calibration set ``cell`` prunes with, built as :func:`~prunestudio.core.run.run.iter_run`
        builds it (the recipe checked first, with the job's torch threads), from the original weights."""
        from ..model.threads import job_threads
        from ..run.calibration import build_calibration
        from ..run.checks import validate_recipe

        assert self.loaded is not None
        self.restore()
        validate_recipe(self.loaded, cell.recipe)
        with job_threads():
            calib = yield from build_calibration(self.loaded, cell.recipe.calibration, should_stop)
        if len(calib) == 0:
            raise CalibrationError("No calibration samples were produced.")
        return calib

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
