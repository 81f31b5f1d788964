"""The live heatmap: decoder blocks (rows) x prunable modules (columns), coloured by sparsity or
by the relative output error.

One pyqtgraph ``ImageItem`` over one float32 array (row-major, NaN = not pruned yet, shown
transparent), fixed levels and a ``ColorBarItem``; cells are filled in place as ``ModulePruned``
events arrive on the GUI thread. Clicking a cell emits ``cellClicked``.

Two layers, chosen in the "Colour by" box above the plot, each its own array: the achieved
sparsity (levels 0..1) and each module's relative output error ``||(W - W_pruned) X|| / ||W X||`` on
a fixed sample of its calibration tokens (``core/prune/output_error.py``; levels 0..0.5, another
colour map). At a uniform target the sparsity layer is one flat colour; the error layer shows
where pruning hurt. A run without calibration data (magnitude) measures no error: that choice is
then disabled and says why. Switching layers keeps the selected cell; hovering a cell gives both
numbers.

Blocks of different kinds (hybrid models: linear attention, convolution or state-space mixers
beside full attention) have different modules. The columns are the union of every block's
modules, grouped by role (attention first, then the rest, each in forward order), and a module a
block does not have is drawn as an *absent* cell (hatched, and said so on hover): never as 0%.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QPalette
from PySide6.QtWidgets import QComboBox, QGraphicsRectItem, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from ...core.model.architecture import module_role
from ...core.model.experts import MARK, split_name
from ..plotting import palette_color, style_plot, style_widget

_ROLE_ORDER = {"attention": 0, "mlp": 1}

SPARSITY, ERROR = "sparsity", "error"  # the layers
ERROR_FORMULA = "\u2016(W\u2212\u0174)X\u2016 / \u2016WX\u2016"  # ||(W-Ŵ)X|| / ||WX||
# Fixed levels for the error, so colours compare across runs. 0..0.5, not 0..1: on the demo model
# (SmolLM2-135M, 8 x 128 calibration tokens) Wanda at 50% gives errors of 0.003 to 0.29 (median
# 0.17), SparseGPT at 50% 0.003 to 0.18, Wanda at 70% 0.005 to 0.49 (median 0.29); on 0..1 a usual
# run would use the lower third of the map only. A larger error is drawn in the top colour (the
# hover gives the number).
ERROR_LEVELS = (0.0, 0.5)
LAYERS = {
    SPARSITY: {"choice": "Sparsity", "title": "Achieved sparsity per module",
               "bar": "sparsity (fraction of zeros)", "colormap": "viridis", "levels": (0.0, 1.0)},
    # a short title (a long one widens the plot past its widget and pushes the colour bar out):
    # the colour bar's label carries the formula
    ERROR: {"choice": "Output error", "title": "Relative output error per module",
            # plasma: unlike viridis in the middle (magenta, not teal), and neither end near black
            # or white, so a small error never reads as an empty cell in a dark or a light theme
            "bar": f"{ERROR_FORMULA} on calibration tokens", "colormap": "plasma", "levels": ERROR_LEVELS},
}
NO_RUN = "No run yet: the output error is measured while a run prunes with calibration data."
NO_DATA = ("No output error in this run: it pruned without calibration data (magnitude), so there "
           f"were no tokens to measure {ERROR_FORMULA} on.")
ERROR_TIP = (f"Each module's relative output error {ERROR_FORMULA} on a fixed sample of its calibration "
             "tokens (up to 128): how much pruning changed what the module computes. Where the sparsity "
             "is one flat colour, this shows which modules lost most.")


def column_order(names: tuple[str, ...] | list[str]) -> list[str]:
    """``names`` grouped by role (attention, then the rest), forward order kept within a role."""
    return sorted(names, key=lambda n: (_ROLE_ORDER.get(module_role(n), 1), list(names).index(n)))


def short_names(names: tuple[str, ...] | list[str]) -> list[str]:
    """The shortest unique dotted suffix of each name (``self_attn.q_proj`` -> ``q_proj``).

    A name standing for every expert's matrix of one kind keeps its experts part, written with a
    middle dot: ``mlp.experts[*].down_proj`` -> ``experts·down_proj`` (never a bare ``down_proj``,
    which would read as a dense MLP's)."""
    parts = [n.split(".") for n in names]
    out = []
    for p in parts:
        first = 2 if len(p) >= 2 and p[-2].endswith(MARK) else 1
        for k in range(first, len(p) + 1):
            cand = ".".join(p[-k:])
            if sum(1 for q in parts if ".".join(q[-k:]) == cand) == 1:
                out.append(cand)
                break
        else:
            out.append(".".join(p))
    return [s.replace(MARK + ".", "\u00b7") for s in out]


class HeatmapView(QWidget):
    cellClicked = Signal(int, int)  # block, module index

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.glw = pg.GraphicsLayoutWidget()
        style_widget(self.glw)
        self.plot = self.glw.addPlot()
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.invertY(True)
        self.plot.setLabel("left", "decoder block")
        self.plot.setLabel("bottom", "module")
        self.plot.setTitle(LAYERS[SPARSITY]["title"])
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.bar = pg.ColorBarItem(values=(0.0, 1.0), colorMap=pg.colormap.get("viridis"),
                                   interactive=False, width=14)
        self.bar.setImageItem(self.image, insert_in=self.plot)
        style_plot(self.plot)
        text = palette_color(QPalette.ColorRole.Text)
        self.bar.axis.setTextPen(pg.mkPen(text))
        self.bar.axis.setPen(pg.mkPen(text))
        self.bar.axis.setLabel(LAYERS[SPARSITY]["bar"], color=text.name())
        self.bar.axis.enableAutoSIPrefix(False)  # 0..0.5 must not read "0..500 (x0.001)"
        self.layer = SPARSITY
        self.layer_choice = QComboBox()
        for key, layer in LAYERS.items():
            self.layer_choice.addItem(layer["choice"], key)
        self.layer_choice.setItemData(0, "Each module's achieved sparsity (fraction of zeros).",
                                      Qt.ItemDataRole.ToolTipRole)
        layer_label = QLabel("Colour &by:")
        layer_label.setBuddy(self.layer_choice)
        choice_row = QHBoxLayout()
        choice_row.addWidget(layer_label)
        choice_row.addWidget(self.layer_choice)
        choice_row.addStretch(1)
        self.placeholder = pg.TextItem("Start a run: cells fill in as modules are pruned.",
                                       color=palette_color(QPalette.ColorRole.PlaceholderText), anchor=(0.5, 0.5))
        self.placeholder.setPos(0.5, 0.5)
        self.plot.addItem(self.placeholder)
        self.plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0)
        self.plot.getAxis("bottom").setTicks([[], []])
        self.plot.getAxis("left").setTicks([[], []])
        self.marker = QGraphicsRectItem(0, 0, 1, 1)
        pen = pg.mkPen(palette_color(QPalette.ColorRole.Highlight), width=3)
        pen.setCosmetic(True)
        self.marker.setPen(pen)
        self.marker.setVisible(False)
        self.marker.setZValue(10)
        self.plot.addItem(self.marker)
        self.hover = QLabel("Cells fill in as modules are pruned; click one to see its mask.")
        self.hover.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(choice_row)
        lay.addWidget(self.glw, 1)
        lay.addWidget(self.hover)
        self.names: list[str] = []
        self._absent = np.zeros((1, 1), dtype=bool)
        self._absent_items: list[QGraphicsRectItem] = []
        self._data = np.full((1, 1), np.nan, dtype=np.float32)
        self._error = np.full((1, 1), np.nan, dtype=np.float32)
        self._errors_expected = False  # this run has calibration data (errors will come)
        self.image.setImage(self._data, levels=(0.0, 1.0), autoLevels=False)
        self._set_error_available(False, NO_RUN)
        self.layer_choice.currentIndexChanged.connect(lambda _i: self.set_layer(self.layer_choice.currentData()))
        self.glw.scene().sigMouseClicked.connect(self._clicked)
        self.glw.scene().sigMouseMoved.connect(self._moved)

    # ---- data -------------------------------------------------------------------------------
    def reset(self, num_blocks: int, module_names: tuple[str, ...] | list[str],
              per_block: tuple[tuple[str, ...], ...] | list[list[str]] | None = None,
              errors_expected: bool = True) -> None:
        """Empty cells for ``num_blocks`` blocks x ``module_names`` (the union over blocks);
        ``per_block[i]``: the modules block ``i`` has (None: every block has every module).
        ``errors_expected``: the run prunes with calibration data, so modules will come with an
        output error (False: the error layer is disabled, and left if it was shown)."""
        self.names = column_order(module_names)
        self._data = np.full((max(num_blocks, 1), max(len(self.names), 1)), np.nan, dtype=np.float32)
        self._error = np.full(self._data.shape, np.nan, dtype=np.float32)
        self._errors_expected = errors_expected
        self._set_error_available(errors_expected, NO_DATA)
        self._absent = np.zeros(self._data.shape, dtype=bool)
        if per_block is not None:
            for b, have in enumerate(per_block[:num_blocks]):
                have = set(have)
                for j, name in enumerate(self.names):
                    self._absent[b, j] = name not in have
        self._draw_absent()
        self.hover.setText("Cells fill in as modules are pruned; click one to see its mask."
                           + (" Hatched: modules a block of that kind does not have." if self._absent.any() else ""))
        self.image.setImage(self._shown(), levels=LAYERS[self.layer]["levels"], autoLevels=False)
        self.image.setRect(QRectF(0, 0, self._data.shape[1], self._data.shape[0]))
        labels = [s.replace("\u00b7", "\n") for s in short_names(self.names)]  # experts on two lines
        self.plot.getAxis("bottom").setTicks([[(j + 0.5, s) for j, s in enumerate(labels)], []])
        step = max(1, math.ceil(num_blocks / 24))
        self.plot.getAxis("left").setTicks([[(b + 0.5, str(b)) for b in range(0, num_blocks, step)],
                                            [(b + 0.5, "") for b in range(num_blocks)]])
        self.plot.setRange(xRange=(0, self._data.shape[1]), yRange=(0, self._data.shape[0]), padding=0)
        self.marker.setVisible(False)
        self.placeholder.setVisible(False)

    def _draw_absent(self) -> None:
        """One hatched rectangle per run of absent cells in a row (few items, whatever the size)."""
        for item in self._absent_items:
            self.plot.removeItem(item)
        self._absent_items = []
        color = palette_color(QPalette.ColorRole.Mid)
        brush = QBrush(color, Qt.BrushStyle.BDiagPattern)
        pen = pg.mkPen(color)
        pen.setCosmetic(True)
        for b in range(self._absent.shape[0]):
            j = 0
            while j < self._absent.shape[1]:
                if not self._absent[b, j]:
                    j += 1
                    continue
                start = j
                while j < self._absent.shape[1] and self._absent[b, j]:
                    j += 1
                item = QGraphicsRectItem(start, b, j - start, 1)
                item.setBrush(brush)
                item.setPen(pen)
                item.setZValue(5)
                self.plot.addItem(item)
                self._absent_items.append(item)

    def is_absent(self, block: int, module: int) -> bool:
        return bool(self._absent[block, module]) if 0 <= block < self._absent.shape[0] and \
            0 <= module < self._absent.shape[1] else False

    def set_value(self, block: int, module: int | str, value: float, error: float | None = None) -> None:
        """A pruned module's sparsity ``value`` and relative output ``error`` (None: not measured).
        The first module of a run that comes without an error, before any came with one, disables
        the error layer (the run has no calibration data); one with an error enables it."""
        j = self.names.index(module) if isinstance(module, str) else module
        if self.is_absent(block, j):
            return
        if 0 <= block < self._data.shape[0] and 0 <= j < self._data.shape[1]:
            self._data[block, j] = value
            if error is not None:
                self._error[block, j] = error
                if not self.error_available():
                    self._set_error_available(True)
            elif self.error_available() and np.isnan(self._error).all():
                self._errors_expected = False
                self._set_error_available(False, NO_DATA)
            self.image.setImage(self._shown(), autoLevels=False)

    def values(self, layer: str = SPARSITY) -> np.ndarray:
        """A copy of one layer's cells (NaN: not pruned yet, or no error measured)."""
        return (self._error if layer == ERROR else self._data).copy()

    def _shown(self) -> np.ndarray:
        return self._error if self.layer == ERROR else self._data

    # ---- layers -----------------------------------------------------------------------------
    def error_available(self) -> bool:
        item = self.layer_choice.model().item(self.layer_choice.findData(ERROR))
        return bool(item.isEnabled())

    def _set_error_available(self, available: bool, why: str = "") -> None:
        """Enable the error choice, or disable it saying ``why`` (its tooltip and the box's); shown
        when it becomes unavailable, the sparsity layer replaces it."""
        i = self.layer_choice.findData(ERROR)
        self.layer_choice.model().item(i).setEnabled(available)
        tip = ERROR_TIP if available else why
        self.layer_choice.setItemData(i, tip, Qt.ItemDataRole.ToolTipRole)
        self.layer_choice.setToolTip("Colour the cells by sparsity or by the relative output error. "
                                     + ("" if available else "Output error unavailable: " + why))
        if not available and self.layer == ERROR:
            self.set_layer(SPARSITY)

    def set_layer(self, layer: str) -> bool:
        """Colour the cells by ``layer`` (SPARSITY or ERROR); the selected cell stays selected.
        False (nothing changed) when the error layer is unavailable."""
        if layer == ERROR and not self.error_available():
            self.layer_choice.blockSignals(True)
            self.layer_choice.setCurrentIndex(self.layer_choice.findData(self.layer))
            self.layer_choice.blockSignals(False)
            return False
        spec = LAYERS[layer]
        self.layer = layer
        self.layer_choice.blockSignals(True)
        self.layer_choice.setCurrentIndex(self.layer_choice.findData(layer))
        self.layer_choice.blockSignals(False)
        text = palette_color(QPalette.ColorRole.Text)
        self.plot.setTitle(spec["title"], color=text.name())
        self.bar.setColorMap(pg.colormap.get(spec["colormap"]))
        self.bar.setLevels(spec["levels"])
        self.bar.axis.setLabel(spec["bar"], color=text.name())
        self.image.setImage(self._shown(), levels=spec["levels"], autoLevels=False)
        return True

    def select(self, block: int, module: int) -> None:
        self.marker.setRect(QRectF(module, block, 1, 1))
        self.marker.setVisible(True)

    def cell_scene_pos(self, block: int, module: int) -> QPointF:
        return self.image.mapToScene(QPointF(module + 0.5, block + 0.5))

    # ---- mouse ------------------------------------------------------------------------------
    def _cell_at(self, scene_pos: QPointF) -> tuple[int, int] | None:
        p = self.image.mapFromScene(scene_pos)
        j, b = math.floor(p.x()), math.floor(p.y())
        if 0 <= b < self._data.shape[0] and 0 <= j < self._data.shape[1] and self.names:
            return b, j
        return None

    def _clicked(self, ev) -> None:  # noqa: ANN001 - pyqtgraph MouseClickEvent
        cell = self._cell_at(ev.scenePos())
        if cell is not None and not self._absent[cell]:
            self.select(*cell)
            self.cellClicked.emit(*cell)

    def _moved(self, scene_pos: QPointF) -> None:
        cell = self._cell_at(scene_pos)
        if cell is None:
            return
        b, j = cell
        self.glw.setToolTip(self.names[j])  # the full name (the axis shows a short one)
        if self._absent[b, j]:
            self.hover.setText(f"Block {b} has no {self.names[j]} (a block of another kind).")
            return
        self.hover.setText(self.describe(b, j))

    def describe(self, b: int, j: int) -> str:
        """What hovering cell (block ``b``, column ``j``) says: its sparsity and its output error."""
        v, e = self._data[b, j], self._error[b, j]
        val = "not pruned yet" if np.isnan(v) else f"{v:.1%} zeros"
        if not np.isnan(e):
            val += f", output error {e:.3f}"
        elif not np.isnan(v):
            val += ", output error not measured" + ("" if self._errors_expected else " (no calibration data)")
        split = split_name(self.names[j])
        if split is not None:
            return (f"Block {b}, {self.names[j]} (the {split[1]} of every expert): {val} over all "
                    "experts. Click for each expert's sparsity, output error and routed tokens.")
        return f"Block {b}, {self.names[j]}: {val}. Click for its mask."
