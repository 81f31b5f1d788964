"""OWL's allocation: the sparsity each block gets (bars) around the target (a line)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QPalette

from ..plotting import SERIES_COLORS, palette_color, plot_widget, set_title


class OwlView:
    """Not a widget subclass: ``.widget`` is the PlotWidget to place in a layout."""

    def __init__(self) -> None:
        self.widget = plot_widget()
        self.plot = self.widget.getPlotItem()
        set_title(self.plot, "OWL: sparsity per block")
        self.plot.setLabel("bottom", "decoder block")
        self.plot.setLabel("left", "sparsity")
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush=pg.mkBrush(SERIES_COLORS[1] + "cc"),
                                    pen=pg.mkPen(None))
        self.plot.addItem(self.bars)
        self.target = pg.InfiniteLine(angle=0, pen=pg.mkPen(palette_color(QPalette.ColorRole.Text), style=Qt.PenStyle.DashLine))
        self.target.setVisible(False)
        self.plot.addItem(self.target)
        self.values: np.ndarray = np.zeros(0)

    def clear(self) -> None:
        self.values = np.zeros(0)
        self.bars.setOpts(x=[], height=[])
        self.target.setVisible(False)

    def set_allocation(self, block_sparsity: tuple[float, ...] | list[float], target: float) -> None:
        self.values = np.asarray(block_sparsity, dtype=np.float64)
        x = np.arange(len(self.values))
        self.bars.setOpts(x=x, height=self.values, width=0.8)
        self.target.setValue(target)
        self.target.setVisible(True)
        lo = float(min(self.values.min(), target)) if len(self.values) else 0.0
        hi = float(max(self.values.max(), target)) if len(self.values) else 1.0
        self.plot.setYRange(max(0.0, lo - 0.05), min(1.0, hi + 0.05))
        self.plot.setXRange(-0.6, max(len(self.values) - 0.4, 0.6))
        step = max(1, len(self.values) // 16)
        self.plot.getAxis("bottom").setTicks([[(i, str(i)) for i in range(0, len(self.values), step)], []])
