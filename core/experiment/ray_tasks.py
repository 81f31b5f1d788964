"""What runs inside Ray's worker processes for a grid: build a calibration set, run a cell, report.

The driver (:mod:`.ray_executor`) makes these plain functions Ray tasks; they never open the run
history. A worker keeps the model it loaded for the next cell it is given (CPU cells: a worker
process runs many; a GPU cell gets a fresh process, Ray's rule for GPU tasks, so it loads the model
itself). Each task tells the :class:`ProgressBoard` actor which cell it runs and what it is doing;
the driver reads the board. A bad input (:class:`~prunestudio.core.errors.PruneStudioError`) is
returned as the cell's failure with its sentence, never raised: Ray retries only a worker that died.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

from ..calib.calibset import CalibrationSet
from ..errors import PruneStudioError
from ..events import BlockStarted, Event, PhaseStarted, run_to_completion
from .grid import Cell, GridSpec
from .session import CellRunner


@dataclass(frozen=True)
class Failed:
    """A calibration set that could not be built, and the sentence that says why."""

    error: str


class ProgressBoard:
    """An actor (the driver creates it with no CPU of its own): what each running task is doing,
    and how many times each was started (more than once: its worker died and Ray ran it again)."""

    def __init__(self) -> None:
        self.doing: dict[str, str] = {}
        self.starts: dict[str, int] = {}

    def started(self, key: str) -> int:
        self.starts[key] = self.starts.get(key, 0) + 1
        self.doing[key] = "starting"
        return self.starts[key]

    def update(self, key: str, doing: str) -> None:
        self.doing[key] = doing

    def ended(self, key: str) -> None:
        self.doing.pop(key, None)

    def snapshot(self) -> tuple[dict[str, str], dict[str, int]]:
        return dict(self.doing), dict(self.starts)


class _Reporter:
    """Turns a task's events into short 'doing' lines on the board (only when the line changes)."""

    def __init__(self, board: Any, key: str, crash_marker: str | None = None) -> None:
        self.board, self.key, self.last, self.crash_marker = board, key, "", crash_marker

    def __call__(self, ev: Event) -> None:
        if isinstance(ev, BlockStarted):
            text = f"block {ev.index + 1}/{ev.num_blocks}"
            if self.crash_marker:
                _crash_once(self.crash_marker, self.key)
        elif isinstance(ev, PhaseStarted) and ev.phase != "capture":
            text = ev.phase
        else:
            return
        if text != self.last:
            self.last = text
            self.board.update.remote(self.key, text)


def _crash_once(marker: str, key: str) -> None:
    """A test hook: the worker dies here when ``marker`` names this cell, once (the file is renamed
    first, so the retry runs)."""
    try:
        with open(marker, encoding="utf-8") as f:
            if f.read().strip() != key:
                return
        os.rename(marker, marker + ".fired")
    except OSError:
        return
    os._exit(1)


_runner: tuple[str, CellRunner] | None = None  # this process's loaded model, for its next cell


def _runner_for(spec: GridSpec, report: _Reporter) -> CellRunner:
    """The runner of this worker for ``spec``'s model and evaluation, loaded once per process."""
    global _runner
    key = json.dumps([spec.model, str(spec.base_dir), spec.device, spec.dtype, spec.trust_remote_code,
                      asdict(spec.eval)], sort_keys=True, default=list)
    if _runner is None or _runner[0] != key:
        _runner = None  # let the previous model go before loading the next
        runner = CellRunner(spec)
        run_to_completion(runner.load(lambda: False), report)
        _runner = (key, runner)
    return _runner[1]


def _started(board: Any, key: str) -> None:
    """Tell the board, and wait until it knows (a worker that dies soon after still counts)."""
    import ray

    ray.get(board.started.remote(key))


def _sentence(e: PruneStudioError) -> str:
    return " ".join(str(e).split())


def build_calibration(spec: GridSpec, cell: Cell, board: Any, threads: int | None) -> CalibrationSet | Failed:
    """The calibration set of ``cell``'s calibration settings (every cell with the same settings
    prunes with it), or :class:`Failed` with the sentence of a bad input."""
    from ..model.threads import set_requested

    set_requested(threads)
    tag = f"calibration:{cell.key}"
    _started(board, tag)
    report = _Reporter(board, tag)
    try:
        runner = _runner_for(spec, report)
        return run_to_completion(runner.build_calibration(cell, lambda: False), report)
    except PruneStudioError as e:
        return Failed(_sentence(e))
    finally:
        board.ended.remote(tag)


def run_cell(spec: GridSpec, cell: Cell, calibration: CalibrationSet | Failed | None, board: Any,
             threads: int | None, crash_marker: str | None = None) -> tuple[dict[str, Any] | None, float, str | None]:
    """``(report, seconds, None)`` for a cell that ran, ``(None, 0, sentence)`` for one that failed
    for a bad input (its calibration set's included). ``threads``: the torch threads of the cell
    (the CPUs Ray gave it; None: auto)."""
    from ..model.threads import set_requested

    if isinstance(calibration, Failed):
        return None, 0.0, f"its calibration set could not be built: {calibration.error}"
    set_requested(threads)
    _started(board, cell.key)
    report = _Reporter(board, cell.key, crash_marker)
    try:
        runner = _runner_for(spec, report)
        t0 = time.perf_counter()
        out = run_to_completion(runner.run_cell(cell, lambda: False, calibration), report)
        seconds = time.perf_counter() - t0
    except PruneStudioError as e:
        return None, 0.0, _sentence(e)
    finally:
        board.ended.remote(cell.key)
    out["executor"] = {"name": "ray", "node": socket.gethostname(), "pid": os.getpid(),
                       "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    return out, seconds, None


__all__ = ["ProgressBoard", "Failed", "build_calibration", "run_cell"]
