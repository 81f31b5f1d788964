"""The live heatmap: decoder blocks (rows) x prunable modules (columns), coloured by sparsity.

One pyqtgraph ``ImageItem`` over one float32 array (row-major, NaN = not pruned yet, shown
transparent), fixed levels 0..1 and a ``ColorBarItem``; cells are filled in place as
``ModulePruned`` events arrive on the GUI thread. Clicking a cell emits ``cellClicked``.

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
from PySide6.QtWidgets import QGraphicsRectItem, QLabel, QVBoxLayout, QWidget

from ...core.model.architecture import module_role
from ..plotting import palette_color, style_plot, style_widget

_ROLE_ORDER = {"attention": 0, "mlp": 1}


def column_order(names: tuple[str, ...] | list[str]) -> list[str]:
    """``names`` grouped by role (attention, then the rest), forward order kept within a role."""
    return sorted(names, key=lambda n: (_ROLE_ORDER.get(module_role(n), 1), list(names).index(n)))


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
        self._absent = np.zeros((1, 1), dtype=bool)
        self._absent_items: list[QGraphicsRectItem] = []
        self._data = np.full((1, 1), np.nan, dtype=np.float32)
        self.image.setImage(self._data, levels=(0.0, 1.0), autoLevels=False)
        self.glw.scene().sigMouseClicked.connect(self._clicked)
        self.glw.scene().sigMouseMoved.connect(self._moved)

    # ---- data -------------------------------------------------------------------------------
    def reset(self, num_blocks: int, module_names: tuple[str, ...] | list[str],
              per_block: tuple[tuple[str, ...], ...] | list[list[str]] | None = None) -> None:
        """Empty cells for ``num_blocks`` blocks x ``module_names`` (the union over blocks);
        ``per_block[i]``: the modules block ``i`` has (None: every block has every module)."""
        self.names = column_order(module_names)
        self._data = np.full((max(num_blocks, 1), max(len(self.names), 1)), np.nan, dtype=np.float32)
        self._absent = np.zeros(self._data.shape, dtype=bool)
        if per_block is not None:
            for b, have in enumerate(per_block[:num_blocks]):
                have = set(have)
                for j, name in enumerate(self.names):
                    self._absent[b, j] = name not in have
        self._draw_absent()
        self.hover.setText("Cells fill in as modules are pruned; click one to see its mask."
                           + (" Hatched: modules a block of that kind does not have." if self._absent.any() else ""))
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

    def set_value(self, block: int, module: int | str, value: float) -> None:
        j = self.names.index(module) if isinstance(module, str) else module
        if self.is_absent(block, j):
            return
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
        if cell is not None and not self._absent[cell]:
            self.select(*cell)
            self.cellClicked.emit(*cell)

    def _moved(self, scene_pos: QPointF) -> None:
        cell = self._cell_at(scene_pos)
        if cell is None:
            return
        b, j = cell
        if self._absent[b, j]:
            self.hover.setText(f"Block {b} has no {self.names[j]} (a block of another kind).")
            return
        v = self._data[b, j]
        val = "not pruned yet" if np.isnan(v) else f"{v:.1%} zeros"
        self.hover.setText(f"Block {b}, {self.names[j]}: {val}. Click for its mask.")
