"""Step 6: every finished run (core.history) in a table, and perplexity against sparsity.

Above them, the grid bar (:mod:`.history_grid`) runs an experiment grid here or on a Ray cluster;
its cells join the table and the plot as they finish.

A partial run (some block weights it could not prune stayed dense) says so in its Achieved and
Coverage cells and in its series' name, so it is never read as a fully pruned model.

The plot has one series per (method, calibration source): a line through its runs sorted by
sparsity, with symbols, and a legend. Its y axis is the pruned perplexity or the mean relative
output error of the pruned modules on calibration tokens (``RunRow.output_error``: how much pruning
changed what the modules compute, measured without an evaluation text); only runs with that number
are plotted. A model filter keeps different models (and their different perplexity scales) apart.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ...core.run.history import RunRow
from ..plotting import SERIES_COLORS, plot_widget, set_title, style_plot
from ..state import AppState
from ..widgets import fmt_float, fmt_seconds
from .history_grid import GridBar

COLUMNS = ("#", "When", "Model", "Method", "Structure", "Target", "Achieved", "Coverage", "Calibration",
           "Samples", "Output error", "PPL dense", "PPL pruned", "PPL measured on", "Time", "Exported to")
ERROR_TIP = ("The mean relative output error \u2016(W\u2212\u0174)X\u2016 / \u2016WX\u2016 of the pruned modules, "
             "on up to 128 calibration tokens per module input: how much pruning changed what the modules "
             "compute (0 = nothing). '–': not measured (pruned without calibration data, e.g. magnitude).")
METRICS = {"ppl": ("Perplexity", "perplexity", "Perplexity after pruning, by method and calibration data"),
           "error": ("Output error", "mean relative output error",
                     "Mean relative output error of the pruned modules, by method and calibration data")}
COVERAGE_TIP = ("The share of the decoder blocks' weights the run pruned. 'partial': some weights a method "
                "would prune could not be (the fused experts of a mixture-of-experts model) and stayed dense; "
                "'Achieved' is then the sparsity of the pruned modules only.")
ALL = "All models"
SYMBOLS = ("o", "s", "t", "d", "+", "x", "star", "p", "h")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


class _Item(QTableWidgetItem):
    """Sorts numerically when both cells hold numbers."""

    def __init__(self, text: str, value: Any = None) -> None:
        super().__init__(text)
        self.value = value

    def __lt__(self, other: QTableWidgetItem) -> bool:  # noqa: D105
        a, b = self.value, getattr(other, "value", None)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return a < b
        return super().__lt__(other)


def _error_tip(r: RunRow) -> str:
    """The Output error cell's tooltip: the worst module too, when the report names it."""
    err = r.report.get("output_error") if isinstance(r.report, dict) else None
    if not isinstance(err, dict) or _num(r.output_error) is None:
        return ERROR_TIP
    worst = f" Worst: {err['max_module']} ({err['max']:.3f})." if err.get("max_module") and _num(err.get("max")) else ""
    return f"Mean over {err.get('modules', '?')} modules: {r.output_error:.3f}.{worst} " + ERROR_TIP


def _coverage_text(r: RunRow) -> str:
    if r.coverage is None:
        return "–"
    return f"{r.coverage:.0%}" + (" partial" if r.partial else "")


class HistoryPanel(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.rows: list[RunRow] = []

        bar = QHBoxLayout()
        self.model_filter = QComboBox()
        self.model_filter.setToolTip("Compare runs of one model (perplexities of different models do not mix).")
        self.model_filter.setMinimumContentsLength(24)
        self.metric = QComboBox()
        for key, (label, _axis, _title) in METRICS.items():
            self.metric.addItem(label, key)
        self.metric.setToolTip("What the plot compares the runs by: the pruned perplexity (on the evaluation "
                               "text) or the mean relative output error on calibration tokens.")
        self.log_y = QCheckBox("&Log scale")
        self.log_y.setToolTip("Perplexity grows fast at high sparsity; a log scale keeps the low values readable.")
        self.log_y.setChecked(True)
        self.refresh_button = QPushButton("&Refresh")
        self.delete_button = QPushButton("&Delete selected")
        self.delete_button.setToolTip("Remove the selected runs from the history (exports stay on disk).")
        lab = QLabel("&Model:")
        lab.setBuddy(self.model_filter)
        plot_lab = QLabel("&Plot:")
        plot_lab.setBuddy(self.metric)
        for w in (lab, self.model_filter, plot_lab, self.metric, self.log_y, self.refresh_button, self.delete_button):
            bar.addWidget(w)
        bar.addStretch(1)
        self.count = QLabel()
        bar.addWidget(self.count)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.horizontalHeaderItem(COLUMNS.index("Coverage")).setToolTip(COVERAGE_TIP)
        self.table.horizontalHeaderItem(COLUMNS.index("PPL measured on")).setToolTip(
            "The text the perplexities were measured on, and windows × tokens per window: compare "
            "perplexities measured on the same text with the same windows only.")
        self.table.horizontalHeaderItem(COLUMNS.index("Output error")).setToolTip(ERROR_TIP)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        self.table.setSortingEnabled(True)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)

        self.plot_widget = plot_widget()
        self.plot = self.plot_widget.getPlotItem()
        set_title(self.plot, "Perplexity after pruning, by method and calibration data")
        self.plot.setLabel("bottom", "sparsity (fraction of zeros)")
        self.plot.setLabel("left", "perplexity")
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.legend = self.plot.addLegend(offset=(10, 10))
        style_plot(self.plot)

        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(self.plot_widget)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 2)
        self.grid_bar = GridBar(state)
        lay = QVBoxLayout(self)
        lay.addWidget(self.grid_bar)
        lay.addLayout(bar)
        lay.addWidget(split, 1)

        self.refresh_button.clicked.connect(self.refresh)
        self.delete_button.clicked.connect(self.delete_selected)
        self.model_filter.currentIndexChanged.connect(self._redraw)
        self.metric.currentIndexChanged.connect(self._redraw)
        self.log_y.toggled.connect(self._redraw)
        state.history_changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        try:
            self.rows = self.state.history().runs()
        except Exception as e:  # noqa: BLE001 - an unreadable history must not break the window
            from .. import errors

            errors.report(e, context="reading the run history")
            self.rows = []
        current = self.model_filter.currentText()
        models = sorted({r.model or "?" for r in self.rows})
        self.model_filter.blockSignals(True)
        self.model_filter.clear()
        self.model_filter.addItems([ALL] + models)
        latest = self.rows[-1].model if self.rows else ALL
        i = self.model_filter.findText(current if current and current in models + [ALL] and current != ALL else latest)
        self.model_filter.setCurrentIndex(max(i, 0))
        self.model_filter.blockSignals(False)
        self._redraw()

    def selected_model(self) -> str | None:
        t = self.model_filter.currentText()
        return None if t in ("", ALL) else t

    def visible_rows(self) -> list[RunRow]:
        m = self.selected_model()
        return [r for r in self.rows if m is None or r.model == m]

    def _redraw(self, *_a: Any) -> None:
        rows = self.visible_rows()
        self._fill_table(rows)
        self._plot(rows)
        self.count.setText(f"{len(rows)} of {len(self.rows)} runs")

    def _fill_table(self, rows: list[RunRow]) -> None:
        t = self.table
        t.setSortingEnabled(False)
        t.setRowCount(len(rows))
        for i, r in enumerate(rows):
            when = dt.datetime.fromtimestamp(r.created).strftime("%Y-%m-%d %H:%M")
            vals = [
                (str(r.id), r.id), (when, r.created), (r.model or "", None), (r.method or "", None),
                (r.structure or "", None), (f"{(r.sparsity or 0):.0%}", r.sparsity),
                (f"{(r.global_sparsity or 0):.2%}" + (" (partial)" if r.partial else ""), r.global_sparsity),
                (_coverage_text(r), r.coverage), (r.calib_source or "–", None),
                (f"{r.calib_nsamples or 0} × {r.calib_seqlen or 0}", r.calib_nsamples),
                (fmt_float(_num(r.output_error), 3), _num(r.output_error)),
                (fmt_float(_num(r.ppl_dense), 2), _num(r.ppl_dense)),
                (fmt_float(_num(r.ppl_pruned), 2), _num(r.ppl_pruned)),
                (r.measured_on() or "–", None),
                (fmt_seconds(_num(r.seconds)), _num(r.seconds)), (r.export_path or "", None),
            ]
            for c, (text, value) in enumerate(vals):
                item = _Item(text, value)
                if c == 0:
                    item.setData(Qt.ItemDataRole.UserRole, r.id)
                if r.partial and COLUMNS[c] in ("Achieved", "Coverage"):
                    notes = r.report.get("notes") or []
                    item.setToolTip(notes[0] if notes else COVERAGE_TIP)
                if COLUMNS[c] == "Output error":
                    item.setToolTip(_error_tip(r))
                t.setItem(i, c, item)
        t.setSortingEnabled(True)

    def series(self, rows: list[RunRow], metric: str = "ppl") -> dict[tuple[str, str], list[tuple[float, float]]]:
        """``{(method, calibration source): [(sparsity, y), ...]}`` sorted by sparsity; ``y``: the
        pruned perplexity (``metric`` "ppl") or the mean relative output error ("error")."""
        out: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
        for r in rows:
            ppl = _num(r.output_error if metric == "error" else r.ppl_pruned)
            x = _num(r.global_sparsity) if _num(r.global_sparsity) is not None else _num(r.sparsity)
            if ppl is None or x is None:
                continue
            label = f"{r.method}" + (f" {r.structure}" if r.structure and r.structure != "unstructured" else "")
            label += " (partial)" if r.partial else ""  # never one line with runs that pruned everything
            out[(label, r.calib_source or "none")].append((x, ppl))
        return {k: sorted(v) for k, v in sorted(out.items())}

    def _plot(self, rows: list[RunRow]) -> None:
        self.plot.clear()
        self.legend.clear()
        metric = self.metric.currentData() or "ppl"
        _label, axis, title = METRICS[metric]
        set_title(self.plot, title)
        self.plot.setLabel("left", axis)
        logy = self.log_y.isChecked()
        self.plot.setLogMode(x=False, y=logy)
        # the dense model's error is 0 by definition: a line only for perplexity
        dense = [_num(r.ppl_dense) for r in rows if _num(r.ppl_dense) is not None] if metric == "ppl" else []
        all_y: list[float] = list(dense)  # type: ignore[arg-type]
        methods: dict[str, int] = {}
        for i, ((method, source), pts) in enumerate(self.series(rows, metric).items()):
            xs = np.array([p[0] for p in pts])
            ys = np.array([p[1] for p in pts])
            all_y.extend(float(v) for v in ys)
            color = SERIES_COLORS[i % len(SERIES_COLORS)]
            sym = SYMBOLS[methods.setdefault(method, len(methods)) % len(SYMBOLS)]
            self.plot.plot(xs, ys, pen=pg.mkPen(color, width=2), symbol=sym, symbolSize=9,
                           symbolBrush=color, symbolPen=pg.mkPen(color), name=f"{method} · {source}")
        if dense:
            d = float(np.median(dense))
            line = pg.InfiniteLine(pos=math.log10(d) if logy else d, angle=0,
                                   pen=pg.mkPen(SERIES_COLORS[-1], width=1, style=Qt.PenStyle.DashLine),
                                   label=f"dense {d:.2f}", labelOpts={"position": 0.05, "color": SERIES_COLORS[-1]})
            self.plot.addItem(line)
        self.plot.setXRange(0.0, 1.0, padding=0.02)
        ys = [y for y in all_y if y > 0]
        if ys:  # a readable range even for one point: at least a factor 1.5 around the data
            lo, hi = min(ys), max(ys)
            if logy:
                self.plot.setYRange(math.log10(lo / 1.5), math.log10(hi * 1.5), padding=0)
            else:
                span = max(hi - lo, 0.1 * hi)
                self.plot.setYRange(max(0.0, lo - 0.3 * span), hi + 0.3 * span, padding=0)

    def delete_selected(self) -> None:
        ids = {self.table.item(i.row(), 0).data(Qt.ItemDataRole.UserRole)
               for i in self.table.selectionModel().selectedRows()}
        for rid in ids:
            self.state.history().delete(int(rid))
        if ids:
            self.refresh()
