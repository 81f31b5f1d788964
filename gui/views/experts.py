"""One block's experts: the sparsity of every expert's matrices and the tokens routed to each.

The Run step's heatmap has one column per kind of expert matrix (``mlp.experts[*].down_proj``
stands for the down projection of every expert of a block). Clicking such a cell drills into the
block: this view shows, per expert (the x axis, expert index), the sparsity of each kind of matrix
(one ``ImageItem``, rows = kinds, fixed levels 0..1 and a ``ColorBarItem``, as the heatmap) and,
below on the same x axis, the calibration tokens the router sent to each expert (bars).

An expert that received fewer than K routed tokens (``PruneConfig.expert_min_tokens``) was pruned
with statistics from every token of its block (the rule ``"all tokens"``,
``core/prune/experts.py``): its bar is hatched in another colour and its column shaded (seen even
at zero tokens), and the legend says so; a dashed line marks K. Magnitude uses no calibration data: no tokens are counted, and the view says that
instead of drawing bars of zero.

The view keeps what it was given per (block, experts module) through :meth:`ExpertsView.record`
(the ``info["experts"]`` of each ``ModulePruned`` event) and shows a block on
:meth:`ExpertsView.show_module`. When the run measured it, each expert's relative output error
(``info["experts"]["output_error"]``, on its own routed tokens) is in the title (the block's
average) and in the hover text (per kind of matrix).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QPainter, QPalette, QPen, QPixmap
from PySide6.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget

from ...core.model.experts import MARK, split_name
from ...core.prune.experts import ALL_TOKENS  # the rule's name in the events
from ..plotting import SERIES_COLORS, palette_color, style_plot, style_widget

_AXIS_WIDTH = 64  # both plots' left axes: the expert columns line up with their bars
ROUTED_COLOR = SERIES_COLORS[0]
SHORT_COLOR = SERIES_COLORS[1]


def _swatch(brush: QBrush | list[QBrush] | None, pen: QPen) -> QLabel:
    """A small square painted like a bar (brushes painted in turn), or (no brush) a line: the
    legend's key."""
    pix = QPixmap(16, 16)
    pix.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pix)
    painter.setPen(pen)
    if brush is None:
        painter.drawLine(0, 8, 16, 8)
    else:
        for b in brush if isinstance(brush, list) else [brush]:
            painter.setBrush(b)
            painter.drawRect(1, 1, 13, 13)
    painter.end()
    label = QLabel()
    label.setPixmap(pix)
    return label


def has_experts(names: tuple[str, ...] | list[str]) -> bool:
    """Whether any of the module ``names`` stands for every expert's matrix of one kind."""
    return any(split_name(n) is not None for n in names)


def short_kind(kind: str) -> str:
    """``down_proj`` -> ``down`` (the row labels)."""
    return kind[:-5] if kind.endswith("_proj") else kind


class ExpertsView(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QLabel("Click a cell of an experts column in the heatmap to see that block's experts.")
        self.title.setWordWrap(True)
        self.glw = pg.GraphicsLayoutWidget()
        style_widget(self.glw)
        text = palette_color(QPalette.ColorRole.Text)

        # ---- sparsity: kinds (rows) x experts (columns) --------------------------------------
        self.sparsity_plot = self.glw.addPlot(row=0, col=0)
        p = self.sparsity_plot
        p.setMenuEnabled(False)
        p.setMouseEnabled(x=False, y=False)
        p.hideButtons()
        p.invertY(True)
        p.setLabel("left", "matrix")
        p.setTitle("Sparsity per expert")
        p.getAxis("bottom").setStyle(showValues=False)
        self.image = pg.ImageItem(axisOrder="row-major")
        p.addItem(self.image)
        self.bar = pg.ColorBarItem(values=(0.0, 1.0), colorMap=pg.colormap.get("viridis"),
                                   interactive=False, width=14)
        self.bar.setImageItem(self.image)
        self.glw.addItem(self.bar, row=0, col=1)
        self.bar.axis.setTextPen(pg.mkPen(text))
        self.bar.axis.setPen(pg.mkPen(text))
        style_plot(p)

        # ---- routed tokens per expert ---------------------------------------------------------
        self.tokens_plot = self.glw.addPlot(row=1, col=0)
        t = self.tokens_plot
        t.setMenuEnabled(False)
        t.setMouseEnabled(x=False, y=False)
        t.hideButtons()
        t.setLabel("left", "routed tokens")
        t.setLabel("bottom", "expert")
        t.setTitle("Routed tokens per expert")
        t.setXLink(p)
        self.routed_bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush=pg.mkBrush(ROUTED_COLOR),
                                           pen=pg.mkPen(ROUTED_COLOR))
        short_brush = QBrush(QColor(SHORT_COLOR), Qt.BrushStyle.BDiagPattern)
        self.short_bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush=short_brush,
                                          pen=pg.mkPen(SHORT_COLOR, width=2))
        # the columns of the short experts shaded over the whole height: seen even at 0 tokens
        self.short_band = pg.BarGraphItem(x=[], height=[], width=1.0, brush=pg.mkBrush(SHORT_COLOR + "33"),
                                          pen=pg.mkPen(None))
        self.short_band.setZValue(-1)
        t.addItem(self.short_band)
        t.addItem(self.routed_bars)
        t.addItem(self.short_bars)
        # K: the dashed line, named in the legend (a label on the line would hide a bar)
        self.threshold = pg.InfiniteLine(angle=0, pen=pg.mkPen(text, style=Qt.PenStyle.DashLine))
        self.threshold.setVisible(False)
        t.addItem(self.threshold)
        self.no_tokens = pg.TextItem("", color=palette_color(QPalette.ColorRole.PlaceholderText), anchor=(0.5, 0.5))
        self.no_tokens.setVisible(False)
        t.addItem(self.no_tokens)
        for axis in (p, t):
            axis.getAxis("left").setWidth(_AXIS_WIDTH)
        style_plot(t)

        self.glw.ci.layout.setRowStretchFactor(0, 1)
        self.glw.ci.layout.setRowStretchFactor(1, 1)

        # ---- legend, under the plots (Qt labels: they wrap in a narrow tab) -----------------------
        self.legend = QWidget()
        grid = QGridLayout(self.legend)
        grid.setContentsMargins(4, 0, 4, 0)
        self.legend_lines: list[str] = []
        for row, (brush, pen, line) in enumerate((
                (self.routed_bars.opts["brush"], self.routed_bars.opts["pen"],
                 "K or more routed tokens: pruned with the expert's own tokens"),
                ([self.short_band.opts["brush"], short_brush], self.short_bars.opts["pen"],
                 "fewer than K routed tokens: pruned with statistics from all the block's tokens"))):
            grid.addWidget(_swatch(brush, pen), row, 0, Qt.AlignmentFlag.AlignTop)
            label = QLabel(line)
            label.setWordWrap(True)
            grid.addWidget(label, row, 1)
            self.legend_lines.append(line)
        grid.addWidget(_swatch(None, self.threshold.pen), 2, 0, Qt.AlignmentFlag.AlignTop)
        self.k_label = QLabel("")  # the dashed line: K of this run
        self.k_label.setWordWrap(True)
        grid.addWidget(self.k_label, 2, 1)
        grid.setColumnStretch(1, 1)

        self.hover = QLabel("")
        self.hover.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.title)
        lay.addWidget(self.glw, 1)
        lay.addWidget(self.legend)
        lay.addWidget(self.hover)

        self._data: dict[tuple[int, str], dict[str, dict[str, Any]]] = {}
        self.current: tuple[int, str] | None = None  # (block, experts module path) shown
        self.kinds: list[str] = []
        self.sparsity = np.zeros((0, 0), dtype=np.float32)
        self.errors = np.zeros((0, 0), dtype=np.float32)  # [kind, expert] output error, NaN: none
        self.tokens: list[int] | None = None
        self.rules: list[str] | None = None
        self.min_tokens: int | None = None
        self.glw.scene().sigMouseMoved.connect(self._moved)
        self.clear()

    # ---- data ----------------------------------------------------------------------------------
    def record(self, block: int, name: str, info: dict[str, Any]) -> bool:
        """Keep ``info["experts"]`` of module ``name`` of block ``block``; False when ``name`` is
        not an experts name or carries no per-expert numbers."""
        split = split_name(name)
        experts = info.get("experts") if info else None
        if split is None or not experts:
            return False
        path, kind = split
        self._data.setdefault((block, path), {})[kind] = experts
        return True

    def has(self, block: int, name: str) -> bool:
        split = split_name(name)
        return split is not None and (block, split[0]) in self._data

    def preview_of(self, block: int, name: str, expert: int | None, sparsity: float) -> tuple[str, float]:
        """The name and sparsity to title a mask preview with: for an experts name whose preview is
        expert ``expert``'s, that expert's (``mlp.experts[0].down_proj``, its own sparsity);
        otherwise ``name`` and ``sparsity`` unchanged."""
        split = split_name(name)
        if split is None or expert is None:
            return name, sparsity
        own = self._data.get((block, split[0]), {}).get(split[1], {}).get("sparsity") or []
        return name.replace(MARK, f"[{expert}]"), float(own[expert]) if expert < len(own) else sparsity

    def error_of(self, block: int, name: str, expert: int | None) -> float | None:
        """Expert ``expert``'s relative output error for the kind of matrix of experts name ``name``
        (None: not an experts name, or not measured)."""
        split = split_name(name)
        if split is None or expert is None:
            return None
        own = self._data.get((block, split[0]), {}).get(split[1], {}).get("output_error") or []
        v = own[expert] if expert < len(own) else None
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    def clear(self) -> None:
        """Forget every block (a new run) and show the empty view."""
        self._data.clear()
        self.current = None
        self.kinds = []
        self.sparsity = np.zeros((0, 0), dtype=np.float32)
        self.errors = np.zeros((0, 0), dtype=np.float32)  # [kind, expert] output error, NaN: none
        self.tokens = self.rules = self.min_tokens = None
        self.title.setText("Click a cell of an experts column in the heatmap to see that block's experts.")
        self.hover.setText("")
        self.image.clear()
        self._set_bars([], [], [])
        self.threshold.setVisible(False)
        self.no_tokens.setVisible(False)
        self.legend.setVisible(False)
        self.sparsity_plot.getAxis("left").setTicks([[], []])
        self.sparsity_plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0)
        self.tokens_plot.setYRange(0, 1, padding=0)

    def show_module(self, block: int, name: str) -> bool:
        """Show the experts of the block's experts module that ``name`` belongs to; False (nothing
        changed) when ``name`` is not an experts name."""
        split = split_name(name)
        if split is None:
            return False
        path = split[0]
        kinds = self._data.get((block, path))
        if not kinds:
            self.clear_shown(f"Block {block}, {path}: not pruned yet.")
            self.current = (block, path)
            return True
        self.current = (block, path)
        self.kinds = list(kinds)
        first = kinds[self.kinds[0]]
        n = len(first.get("sparsity") or [])
        rows = []
        for k in self.kinds:
            s = list(kinds[k].get("sparsity") or [])
            rows.append((s + [math.nan] * n)[:n])
        self.sparsity = np.asarray(rows, dtype=np.float32).reshape(len(self.kinds), n)
        errs = []
        for k in self.kinds:
            e = [math.nan if v is None else float(v) for v in (kinds[k].get("output_error") or [])]
            errs.append((e + [math.nan] * n)[:n])
        self.errors = np.asarray(errs, dtype=np.float32).reshape(len(self.kinds), n)
        counted = next((kinds[k] for k in self.kinds if kinds[k].get("tokens") is not None), None)
        self.tokens = [int(v) for v in counted["tokens"]] if counted else None
        self.rules = list(counted.get("rule") or []) if counted else None
        self.min_tokens = counted.get("min_tokens") if counted else None

        self.image.setImage(self.sparsity, levels=(0.0, 1.0), autoLevels=False)
        self.image.setRect(QRectF(0, 0, max(n, 1), max(len(self.kinds), 1)))
        self.sparsity_plot.getAxis("left").setTicks(
            [[(r + 0.5, short_kind(k)) for r, k in enumerate(self.kinds)], []])
        step = next(s for s in (1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 256, 512, 10**9)
                    if n <= 12 * s)  # at most a dozen numbers
        ticks = [[(e + 0.5, str(e)) for e in range(0, n, step)], [(e + 0.5, "") for e in range(n)] if step > 1 else []]
        self.sparsity_plot.getAxis("bottom").setTicks(ticks)
        self.tokens_plot.getAxis("bottom").setTicks(ticks)
        self.sparsity_plot.setRange(xRange=(0, max(n, 1)), yRange=(0, max(len(self.kinds), 1)), padding=0)

        mean = float(np.nanmean(self.sparsity)) if self.sparsity.size and not np.isnan(self.sparsity).all() else math.nan
        head = f"Block {block}, {path}: {n} experts, {'–' if math.isnan(mean) else f'{mean:.1%}'} zeros on average"
        if self.errors.size and not np.isnan(self.errors).all():
            head += f", output error {float(np.nanmean(self.errors)):.3f} on average"
        if self.tokens is None:
            self._set_bars([], [], [])
            self.threshold.setVisible(False)
            self.legend.setVisible(False)
            self.no_tokens.setText("no calibration data: tokens not counted")
            self.no_tokens.setPos(max(n, 1) / 2, 0.5)
            self.no_tokens.setVisible(True)
            self.tokens_plot.setYRange(0, 1, padding=0)
            self.tokens_plot.getAxis("left").setTicks([[], []])  # no counts: no scale
            self.title.setText(head + ". No calibration data (magnitude): tokens not counted.")
            return True
        short = [r == ALL_TOKENS for r in (self.rules or [])]
        short = (short + [False] * n)[:n]
        top = max(max(self.tokens, default=0), self.min_tokens or 0, 1)
        self._set_bars(list(range(n)), self.tokens, short, top * 1.08)
        self.no_tokens.setVisible(False)
        self.legend.setVisible(True)
        self.tokens_plot.getAxis("left").setTicks(None)
        if self.min_tokens:
            self.threshold.setValue(self.min_tokens)
            self.threshold.setVisible(True)
            self.k_label.setText(f"dashed line: K = {self.min_tokens} routed tokens (the run's expert_min_tokens)")
        else:
            self.threshold.setVisible(False)
            self.k_label.setText("K = 0: every expert pruned with its own routed tokens")
        self.tokens_plot.setYRange(0, top * 1.08, padding=0)
        n_short = sum(short)
        k = f"K = {self.min_tokens}" if self.min_tokens is not None else "K"
        self.title.setText(head + (f"; {n_short} of them received fewer than {k} routed tokens and "
                                   f"{'was' if n_short == 1 else 'were'} pruned with statistics from all the "
                                   "block's tokens." if n_short else f"; each received at least {k} routed tokens."))
        return True

    def clear_shown(self, text: str) -> None:
        self.kinds = []
        self.sparsity = np.zeros((0, 0), dtype=np.float32)
        self.errors = np.zeros((0, 0), dtype=np.float32)  # [kind, expert] output error, NaN: none
        self.tokens = self.rules = self.min_tokens = None
        self.image.clear()
        self._set_bars([], [], [])
        self.threshold.setVisible(False)
        self.no_tokens.setVisible(False)
        self.legend.setVisible(False)
        self.title.setText(text)

    def _set_bars(self, experts: list[int], tokens: list[int], short: list[bool], top: float = 1.0) -> None:
        """Bars of ``tokens`` at ``experts``; the ``short`` ones hatched, their columns shaded up to ``top``."""
        x = np.asarray(experts, dtype=np.float64) + 0.5
        h = np.asarray(tokens, dtype=np.float64)
        m = np.asarray(short, dtype=bool) if len(short) else np.zeros(len(x), dtype=bool)
        self.routed_bars.setOpts(x=x[~m], height=h[~m], width=0.8)
        self.short_bars.setOpts(x=x[m], height=h[m], width=0.8)
        self.short_band.setOpts(x=x[m], height=np.full(int(m.sum()), float(top)), width=1.0)

    def short_experts(self) -> list[int]:
        """The experts shown as pruned with all the block's tokens."""
        return [e for e, r in enumerate(self.rules or []) if r == ALL_TOKENS]

    # ---- mouse ---------------------------------------------------------------------------------
    def expert_at(self, scene_pos: QPointF) -> tuple[int, int | None] | None:
        """(expert, kind row or None) under ``scene_pos``, or None."""
        n = self.sparsity.shape[1] if self.sparsity.ndim == 2 else 0
        if not n:
            return None
        if self.sparsity_plot.sceneBoundingRect().contains(scene_pos):
            v = self.sparsity_plot.vb.mapSceneToView(scene_pos)
            e, r = math.floor(v.x()), math.floor(v.y())
            if 0 <= e < n and 0 <= r < len(self.kinds):
                return e, r
        elif self.tokens_plot.sceneBoundingRect().contains(scene_pos):
            v = self.tokens_plot.vb.mapSceneToView(scene_pos)
            e = math.floor(v.x())
            if 0 <= e < n:
                return e, None
        return None

    def describe(self, expert: int, row: int | None = None) -> str:
        """One sentence on an expert: its sparsity (per kind, or of ``row``'s kind), tokens and rule."""
        rows = range(len(self.kinds)) if row is None else [row]
        parts = [f"{short_kind(self.kinds[r])} {self.sparsity[r, expert]:.1%}" for r in rows
                 if not math.isnan(self.sparsity[r, expert])]
        text = f"Expert {expert}: " + (", ".join(parts) + " zeros" if parts else "not pruned yet")
        errs = [f"{short_kind(self.kinds[r])} {self.errors[r, expert]:.3f}" for r in rows
                if self.errors.shape == self.sparsity.shape and not math.isnan(self.errors[r, expert])]
        if errs:
            text += "; output error " + ", ".join(errs)
        if self.tokens is None:
            return text + "; no calibration data: tokens not counted."
        tokens = self.tokens[expert] if expert < len(self.tokens) else 0
        text += f"; {tokens} routed token{'' if tokens == 1 else 's'}"
        if expert in self.short_experts():
            return text + (f", fewer than K = {self.min_tokens}: pruned with statistics from all the block's tokens.")
        return text + ", pruned with its own tokens."

    def _moved(self, scene_pos: QPointF) -> None:
        hit = self.expert_at(scene_pos)
        if hit is not None:
            self.hover.setText(self.describe(*hit))
