"""Running an experiment grid: every pending cell through the one run path, resumable.

:func:`iter_experiment` is the driver: it skips the cells already in the run history, hands the
others to an executor (:mod:`.executors`: this process, one model loaded for the whole grid, each
cell from a copy of its original weights; or a Ray cluster), and writes each cell's result into the
history as it arrives, then the summary files. It is the history's one writer. A cell is
:class:`~.session.CellRunner`'s work: :func:`~prunestudio.core.run.run.iter_run` with a calibration
set shared by the cells with the same calibration settings, then the grid's perplexity sets and
zero-shot tasks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator

from ..events import Event, Message, PhaseDone, PhaseProgress, PhaseStarted, run_to_completion
from ..run.history import History
from .events import CellFailed, CellFinished, CellOutcome, CellSkipped
from .grid import Cell, GridSpec
from .summary import cell_metrics, write_summary

if TYPE_CHECKING:
    from .executors import Executor

StopFn = Callable[[], bool]


@dataclass
class ExperimentResult:
    """``executed``: cells run and written now; ``skipped``: cells already in the history;
    ``failed``: the key and sentence of each cell that failed now (not written as a run; a rerun
    tries it again)."""

    executed: int
    skipped: int
    cells: list[Cell]
    db_path: Path
    files: dict[str, Path]
    failed: dict[str, str] = field(default_factory=dict)


def default_db(out_dir: str | Path) -> Path:
    return Path(out_dir) / "history.sqlite3"


def iter_experiment(spec: GridSpec, out_dir: str | Path, db_path: str | Path | None = None,
                    dry_run: bool = False, should_stop: StopFn = lambda: False,
                    executor: "Executor | None" = None) -> Generator[Event, None, ExperimentResult]:
    """Run every pending cell of ``spec`` with ``executor`` (None: this process, one cell after
    another); write each result into the history as it arrives and the summary after it. Returns
    the counts. ``dry_run``: list the cells, done or pending, and run nothing.

    A cell an executor reports as failed (the Ray executor does so for a bad input, and for a
    worker that died more often than it may be retried) is recorded in the history's failures with
    its sentence, not as a run; the others go on. A cancel (``should_stop``) leaves every written
    row whole: each is one transaction, written by this function alone."""
    from .executors import LocalExecutor

    out = Path(out_dir)
    db = Path(db_path) if db_path is not None else default_db(out)
    cells = spec.cells()
    if dry_run:
        hist = History(db) if db.exists() else None
        failures = {k: err for k, _, err in hist.failures()} if hist is not None else {}
        for i, c in enumerate(cells):
            done = hist is not None and hist.has_key(c.key)
            state = "done   " if done else "failed " if c.key in failures else "pending"
            yield Message(f"[{i + 1}/{len(cells)}] {state} {c.describe()}  {c.key[:12]}"
                          + (f"  ({failures[c.key]})" if state == "failed " else ""))
        return ExperimentResult(0, 0, cells, db, {})
    out.mkdir(parents=True, exist_ok=True)
    hist = History(db)
    executed = skipped = 0
    failed: dict[str, str] = {}
    files: dict[str, Path] = {}
    yield PhaseStarted("experiment", total=len(cells))
    t_all = time.perf_counter()
    pending: list[tuple[int, Cell]] = []
    for i, cell in enumerate(cells):
        if hist.has_key(cell.key):
            skipped += 1
            yield CellSkipped(i, len(cells), cell.describe(), cell.key)
        else:
            pending.append((i, cell))
    if pending:
        work = (executor or LocalExecutor()).iter_cells(spec, pending, len(cells), should_stop,
                                                        calib_dir=out / "calibration")
        try:
            for item in work:
                if not isinstance(item, CellOutcome):
                    yield item
                    continue
                cell = cells[item.index]
                if item.error is not None or item.report is None:
                    error = item.error or "the cell returned no report."
                    hist.add_failure(cell.key, cell.describe(), error)
                    failed[cell.key] = error
                    yield CellFailed(item.index, len(cells), cell.describe(), cell.key, error)
                else:
                    report = item.report
                    report["seconds"]["cell"] = report["seconds"]["total"] = item.seconds
                    hist.add(report, None, key=cell.key)
                    hist.clear_failure(cell.key)
                    executed += 1
                    yield CellFinished(item.index, len(cells), cell.describe(), cell.key,
                                       cell_metrics(report, spec.eval), item.seconds)
                    files = write_summary(spec, hist, out)
                yield PhaseProgress("experiment", skipped + executed + len(failed), len(cells))
        finally:
            work.close()  # an executor cancels what it still runs when it is closed early
    files = write_summary(spec, hist, out)
    yield PhaseDone("experiment", time.perf_counter() - t_all)
    return ExperimentResult(executed, skipped, cells, db, files, failed)


def run_experiment(spec: GridSpec, out_dir: str | Path, db_path: str | Path | None = None,
                   on_event: Callable[[Event], None] | None = None, **kw: Any) -> ExperimentResult:
    return run_to_completion(iter_experiment(spec, out_dir, db_path, **kw), on_event)
