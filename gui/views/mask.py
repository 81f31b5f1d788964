"""One module's mask (downsampled density of pruned weights) and its per-row sparsity histogram."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from ..plotting import SERIES_COLORS, style_plot, style_widget


class MaskView(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QLabel("Click a heatmap cell to see that module's mask.")
        self.title.setWordWrap(True)
        self.glw = pg.GraphicsLayoutWidget()
        style_widget(self.glw)
        self.mask_plot = self.glw.addPlot(row=0, col=0)
        self.mask_plot.setMenuEnabled(False)
        self.mask_plot.hideButtons()
        self.mask_plot.invertY(True)
        self.mask_plot.setLabel("left", "outputs (rows)")
        self.mask_plot.setLabel("bottom", "inputs (columns)")
        self.mask_plot.setAspectLocked(False)
        self.mask_image = pg.ImageItem(axisOrder="row-major")
        self.mask_image.setLookupTable(pg.colormap.get("CET-L1").getLookupTable(nPts=256))
        self.mask_plot.addItem(self.mask_image)
        style_plot(self.mask_plot)
        self.hist_plot = self.glw.addPlot(row=1, col=0)
        self.hist_plot.setMenuEnabled(False)
        self.hist_plot.hideButtons()
        self.hist_plot.setLabel("bottom", "sparsity of a row")
        self.hist_plot.setLabel("left", "rows")
        self.hist_plot.setMouseEnabled(x=False, y=False)
        self.hist = pg.PlotDataItem(stepMode="center", fillLevel=0, fillOutline=True,
                                    brush=pg.mkBrush(SERIES_COLORS[0] + "99"), pen=pg.mkPen(SERIES_COLORS[0]))
        self.hist_plot.addItem(self.hist)
        style_plot(self.hist_plot)
        self.glw.ci.layout.setRowStretchFactor(0, 3)
        self.glw.ci.layout.setRowStretchFactor(1, 2)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.title)
        lay.addWidget(self.glw, 1)
        legend = QLabel("Mask: dark = kept, light = pruned (density of removed weights per cell).")
        legend.setWordWrap(True)
        legend.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        lay.addWidget(legend)
        self.current: tuple[int, str] | None = None
        self._empty_ranges()

    def _empty_ranges(self) -> None:
        self.mask_plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0)
        self.hist_plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0.02)

    def clear(self) -> None:
        self.current = None
        self.title.setText("Click a heatmap cell to see that module's mask.")
        self.mask_image.clear()
        self.hist.setData([], [])
        self._empty_ranges()

    def show_module(self, block: int, name: str, sparsity: float, shape: tuple[int, int],
                    mask_image: np.ndarray | None, row_sparsity: np.ndarray | None) -> None:
        self.current = (block, name)
        dims = f"{shape[0]}×{shape[1]}" if shape and shape[0] else ""
        self.title.setText(f"Block {block}, {name} {dims}: {sparsity:.1%} zeros")
        if mask_image is not None:
            img = np.asarray(mask_image, dtype=np.float32)
            self.mask_image.setImage(img, levels=(0.0, 1.0), autoLevels=False)
            # the preview is downsampled: stretch it over the real rows and columns
            h, w = (shape[0], shape[1]) if shape and shape[0] else img.shape
            self.mask_image.setRect(QRectF(0, 0, w, h))
            self.mask_plot.setRange(xRange=(0, w), yRange=(0, h), padding=0)
        else:
            self.mask_image.clear()
        if row_sparsity is not None and len(row_sparsity):
            counts, edges = np.histogram(np.asarray(row_sparsity, dtype=np.float64), bins=40, range=(0.0, 1.0))
            self.hist.setData(edges, counts)
            self.hist_plot.setXRange(0, 1, padding=0.02)
            self.hist_plot.setYRange(0, max(1, counts.max()) * 1.05, padding=0)
        else:
            self.hist.setData([], [])
