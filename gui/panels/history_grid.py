"""The History step's grid bar: run an experiment grid here or on a Ray cluster, and its progress.

A grid file (``prunestudio experiment``'s JSON) runs with the local executor (this computer, one
cell after another), a local Ray, or a Ray cluster at an address. Its cells go into the app's run
history (the table and the plot above refresh as each one arrives) and its tables into
``<grid>-results`` beside the grid file. The bar shows the same counts as the command line: cells
done, running, queued and failed, with what each running cell is doing.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ...core.errors import PruneStudioError
from ...core.events import BlockStarted, PhaseStarted
from ...core.experiment import (
    CellFailed,
    CellFinished,
    CellSkipped,
    CellStarted,
    ExperimentResult,
    GridProgress,
    GridSpec,
    iter_experiment,
    make_executor,
)
from ..jobs import PanelJob
from ..state import AppState
from ..widgets import PathEdit, StatusLine

WHERE = (("This computer", "local"), ("Ray on this computer", "ray"), ("Ray cluster at…", "cluster"))


def results_folder(grid: str | Path) -> Path:
    """Where a grid started here writes its tables: ``<grid file's name>-results`` beside it."""
    p = Path(grid)
    return p.parent / f"{p.stem}-results"


class GridBar(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.grid = PathEdit("open", "Choose a grid file", "Grid files (*.json);;All files (*)", key="grids",
                             placeholder="an experiment grid (JSON), as for prunestudio experiment")
        self.where = QComboBox()
        for text, value in WHERE:
            self.where.addItem(text, value)
        self.where.setToolTip("Who runs the cells: this app, one after another; a Ray started on this computer "
                              "(one cell per GPU); or a running Ray cluster (ray start --head). Ray needs "
                              "pip install 'prunestudio[cluster]'.")
        self.address = QLineEdit()
        self.address.setPlaceholderText("auto, or HOST:PORT")
        self.address.setToolTip("The Ray cluster's address: 'auto' on a node of the cluster, else the "
                                "head's HOST:PORT (as ray start --head printed it).")
        self.run_button = QPushButton("Ru&n grid")
        self.cancel_button = QPushButton("Cancel grid")
        self.cancel_button.setEnabled(False)
        self.bar = QProgressBar()
        self.bar.setVisible(False)
        self.counts = QLabel()
        self.counts.setWordWrap(True)
        self.counts.setVisible(False)  # shown once a grid starts
        self.status = StatusLine()
        row = QHBoxLayout()
        lab = QLabel("Gr&id:")
        lab.setBuddy(self.grid)
        for w, stretch in ((lab, 0), (self.grid, 3), (self.where, 0), (self.address, 1), (self.run_button, 0),
                           (self.cancel_button, 0)):
            row.addWidget(w, stretch)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addWidget(self.bar)
        lay.addWidget(self.counts)
        lay.addWidget(self.status)
        self.job = PanelJob(state, self.status)
        self.where.currentIndexChanged.connect(self._where_changed)
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.job.cancel)
        self._where_changed()
        self._reset(0)

    def _where_changed(self, *_a: Any) -> None:
        self.address.setEnabled(self.where.currentData() == "cluster")

    def _reset(self, total: int) -> None:
        self.total, self.skipped, self.done, self.failed = total, 0, 0, 0
        self.running: dict[int, tuple[str, str]] = {}  # cell index -> (description, doing)
        self.queued: int | None = None  # known from the Ray executor's counts

    # ---- starting ------------------------------------------------------------------------------
    def start(self) -> None:
        path = self.grid.text()
        if not path:
            self.status.set("warn", "Choose a grid file (JSON) first.")
            return
        where = self.where.currentData()
        try:
            spec = GridSpec.load(path)
            if where == "local":
                executor = make_executor("local")
            else:
                address = (self.address.text().strip() or None) if where == "cluster" else None
                if where == "cluster" and address is None:
                    self.status.set("warn", "Give the Ray cluster's address (auto, or HOST:PORT).")
                    return
                executor = make_executor("ray", address=address)
        except PruneStudioError as e:
            self.status.set("error", str(e))
            return
        self.out = results_folder(path)
        self._reset(len(spec.cells()))
        fn = functools.partial(iter_experiment, spec, self.out, self.state.history().path, executor=executor)
        if self.job.start(fn, name="experiment", busy_text=f"Running the grid {spec.name}…",
                          on_event=self.on_event, on_done=self._done, on_finished=self._finished) is not None:
            self.run_button.setEnabled(False)
            self.cancel_button.setEnabled(True)
            self.bar.setVisible(True)
            self.counts.setVisible(True)
            self._show()

    # ---- progress (GUI thread) -----------------------------------------------------------------
    def on_event(self, ev: Any) -> None:
        if isinstance(ev, PhaseStarted) and ev.phase == "experiment":
            self.total = ev.total
        elif isinstance(ev, CellSkipped):
            self.skipped += 1
        elif isinstance(ev, CellStarted):
            self.running.setdefault(ev.index, (ev.description, "starting"))
        elif isinstance(ev, BlockStarted) and len(self.running) == 1:  # the local executor's one cell
            (i, (desc, _)), = self.running.items()
            self.running[i] = (desc, f"block {ev.index + 1}/{ev.num_blocks}")
        elif isinstance(ev, (CellFinished, CellFailed)):
            self.running.pop(ev.index, None)
            if isinstance(ev, CellFinished):
                self.done += 1
                self.state.history_changed.emit()  # the table and the plot show it now
            else:
                self.failed += 1
        elif isinstance(ev, GridProgress):
            self.running = {c.index: (c.description, c.doing) for c in ev.cells}
            self.queued = ev.queued
        else:
            return
        self._show()

    def text(self) -> str:
        """"2 done, 1 running, 1 queued, 0 failed (3 already done)", then one line per running cell."""
        cells = {i: v for i, v in self.running.items() if i >= 0}
        queued = (self.queued if self.queued is not None
                  else max(0, self.total - self.skipped - self.done - self.failed - len(cells)))
        head = f"{self.done} done, {len(cells)} running, {queued} queued, {self.failed} failed"
        if self.skipped:
            head += f" ({self.skipped} already done)"
        lines = [f"#{i + 1} {desc}: {doing}" for i, (desc, doing) in sorted(cells.items())]
        lines += [f"{desc}: {doing}" for i, (desc, doing) in self.running.items() if i < 0]
        return "\n".join([head, *lines])

    def _show(self) -> None:
        self.bar.setRange(0, max(1, self.total))
        self.bar.setValue(self.skipped + self.done + self.failed)
        self.counts.setText(self.text())

    def _done(self, res: ExperimentResult) -> None:
        failed = f", {len(res.failed)} failed (a rerun tries them again)" if res.failed else ""
        self.status.set("warn" if res.failed else "ok",
                        f"{res.executed} cells run, {res.skipped} already done{failed}; tables in {self.out}.")

    def _finished(self) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.running.clear()
        self._show()
        self.state.history_changed.emit()
