"""The live heatmap: decoder blocks (rows) x prunable modules (columns), coloured by sparsity.

One pyqtgraph ``ImageItem`` over one float32 array (row-major, NaN = not pruned yet, shown
transparent), fixed levels 0..1 and a ``ColorBarItem``; cells are filled in place as
``ModulePruned`` events arrive on the GUI thread. Clicking a cell emits ``cellClicked``.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Signal
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QGraphicsRectItem, QLabel, QVBoxLayout, QWidget

from ..plotting import palette_color, style_plot, style_widget


def short_names(names: tuple[str, ...] | list[str]) -> list[str]:
    """The shortest unique dotted suffix of each name (``self_attn.q_proj`` -> ``q_proj``)."""
    parts = [n.split(".") for n in names]
    out = []
    for p in parts:
        for k in range(1, len(p) + 1):
            cand = ".".join(p[-k:])
            if sum(1 for q in parts if ".".join(q[-k:]) == cand) == 1:
                out.append(cand)
                break
        else:
            out.append(".".join(p))
    return out


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
        self.plot.setTitle("Achieved sparsity per module")
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.bar = pg.ColorBarItem(values=(0.0, 1.0), colorMap=pg.colormap.get("viridis"),
                                   interactive=False, width=14)
        self.bar.setImageItem(self.image, insert_in=self.plot)
        style_plot(self.plot)
        text = palette_color(QPalette.ColorRole.Text)
        self.bar.axis.setTextPen(pg.mkPen(text))
        self.bar.axis.setPen(pg.mkPen(text))
        self.bar.axis.setLabel("sparsity (fraction of zeros)", color=text.name())
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
        lay.addWidget(self.glw, 1)
        lay.addWidget(self.hover)
        self.names: list[str] = []
        self._data = np.full((1, 1), np.nan, dtype=np.float32)
        self.image.setImage(self._data, levels=(0.0, 1.0), autoLevels=False)
        self.glw.scene().sigMouseClicked.connect(self._clicked)
        self.glw.scene().sigMouseMoved.connect(self._moved)

    # ---- data -------------------------------------------------------------------------------
    def reset(self, num_blocks: int, module_names: tuple[str, ...] | list[str]) -> None:
        self.names = list(module_names)
        self._data = np.full((max(num_blocks, 1), max(len(self.names), 1)), np.nan, dtype=np.float32)
        self.image.setImage(self._data, levels=(0.0, 1.0), autoLevels=False)
        self.image.setRect(QRectF(0, 0, self._data.shape[1], self._data.shape[0]))
        labels = short_names(self.names)
        self.plot.getAxis("bottom").setTicks([[(j + 0.5, s) for j, s in enumerate(labels)], []])
        step = max(1, math.ceil(num_blocks / 24))
        self.plot.getAxis("left").setTicks([[(b + 0.5, str(b)) for b in range(0, num_blocks, step)],
                                            [(b + 0.5, "") for b in range(num_blocks)]])
        self.plot.setRange(xRange=(0, self._data.shape[1]), yRange=(0, self._data.shape[0]), padding=0)
        self.marker.setVisible(False)
        self.placeholder.setVisible(False)

    def set_value(self, block: int, module: int | str, value: float) -> None:
        j = self.names.index(module) if isinstance(module, str) else module
        if 0 <= block < self._data.shape[0] and 0 <= j < self._data.shape[1]:
            self._data[block, j] = value
            self.image.setImage(self._data, autoLevels=False)

    def values(self) -> np.ndarray:
        return self._data.copy()

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
        if cell is not None:
            self.select(*cell)
            self.cellClicked.emit(*cell)

    def _moved(self, scene_pos: QPointF) -> None:
        cell = self._cell_at(scene_pos)
        if cell is None:
            return
        b, j = cell
        v = self._data[b, j]
        val = "not pruned yet" if np.isnan(v) else f"{v:.1%} zeros"
        self.hover.setText(f"Block {b}, {self.names[j]}: {val}. Click for its mask.")
