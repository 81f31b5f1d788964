"""The events of an experiment grid: a cell started, skipped, finished or failed, and the grid's counts.

Every executor (:mod:`.executors`) yields them through :func:`~.runner.iter_experiment` with the
run path's own events; the CLI draws them (``cli/progress.py``), the GUI's History step too.
:class:`CellOutcome` is not an event: it is what an executor hands the driver, which writes it
into the run history and yields :class:`CellFinished` or :class:`CellFailed` in its place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..events import Event


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


@dataclass(frozen=True)
class CellFailed(Event):
    """A cell that could not run: ``error`` is the sentence that says why (a bad input's own
    sentence; a worker that died as often as it may be retried; an unexpected error's type and
    message). The other cells go on; a rerun tries it again."""

    index: int
    total: int
    description: str
    key: str
    error: str


@dataclass(frozen=True)
class RunningCell:
    """A cell being run now and what it is doing (``block 3/12``, ``ppl:wikitext2``, ``load``...)."""

    index: int
    description: str
    doing: str


@dataclass(frozen=True)
class GridProgress(Event):
    """The counts of the cells this run executes (the ones already done before it are not
    counted): finished, running, queued and failed, with what each running cell is doing."""

    total: int
    done: int
    running: int
    queued: int
    failed: int
    cells: tuple[RunningCell, ...] = ()


@dataclass(frozen=True)
class CellOutcome:
    """What an executor hands the driver for one cell: its report (``error`` None), or the sentence
    it failed with (``report`` None). ``seconds``: the cell's own time, the model's load excluded."""

    index: int
    report: dict[str, Any] | None
    seconds: float
    error: str | None = None


__all__ = ["CellStarted", "CellSkipped", "CellFinished", "CellFailed", "RunningCell", "GridProgress",
           "CellOutcome"]
