"""Who runs a grid's cells: this process, one after another (``local``, the default), or a Ray cluster.

An executor is handed the pending cells and yields events while it runs them, and one
:class:`~.events.CellOutcome` per cell as each ends. It never writes the run history: the driver
(:func:`~.runner.iter_experiment`) owns it and writes each outcome as it arrives, so the database
has one writer whatever runs the cells. The Ray executor lives in :mod:`.ray_executor` and is
imported only when asked for (Ray is an optional extra).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Generator, Protocol, Sequence

from ..errors import ConfigError
from ..events import Event
from .events import CellOutcome, CellStarted
from .grid import Cell, GridSpec
from .session import CellRunner

StopFn = Callable[[], bool]
Pending = Sequence[tuple[int, Cell]]  # (the cell's index in the grid, the cell)

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    name: str

    def iter_cells(self, spec: GridSpec, pending: Pending, total: int, should_stop: StopFn,
                   calib_dir: Path | None = None) -> Generator[Event | CellOutcome, None, None]:
        """Run ``pending`` (``total``: the grid's number of cells); yield events, and one
        :class:`CellOutcome` per cell when it ends. ``should_stop`` cancels (raises ``Cancelled``).
        ``calib_dir``: a folder where calibration sets may be saved for a later run, and read."""
        ...


class LocalExecutor:
    """Every cell in this process, in the grid's order, on one model loaded before the first one.
    A cell that raises stops the grid (the error goes to the caller)."""

    name = "local"

    def iter_cells(self, spec: GridSpec, pending: Pending, total: int, should_stop: StopFn,
                   calib_dir: Path | None = None) -> Generator[Event | CellOutcome, None, None]:
        runner: CellRunner | None = None
        for i, cell in pending:
            if runner is None:
                runner = CellRunner(spec, calib_dir)
                yield from runner.load(should_stop)
            yield CellStarted(i, total, cell.describe(), cell.key)
            t0 = time.perf_counter()
            report = yield from runner.run_cell(cell, should_stop)
            yield CellOutcome(i, report, time.perf_counter() - t0)


def make_executor(name: str = "local", *, address: str | None = None, gpus_per_cell: float | None = None,
                  cpus_per_cell: float | None = None) -> Executor:
    """The executor called ``name``; the cluster settings belong to ``ray`` alone."""
    if name == "local":
        if address is not None or gpus_per_cell is not None or cpus_per_cell is not None:
            raise ConfigError("--address, --gpus-per-cell and --cpus-per-cell go with --executor ray.")
        return LocalExecutor()
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(address=address, gpus_per_cell=gpus_per_cell, cpus_per_cell=cpus_per_cell)
    raise ConfigError(f"unknown executor '{name}' (choose from {', '.join(EXECUTORS)}).")


__all__ = ["Executor", "LocalExecutor", "make_executor", "EXECUTORS"]
