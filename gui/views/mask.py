"""One module's mask (downsampled density of pruned weights), its per-row sparsity histogram and,
beside it, the histogram of its per-row relative output error (``info["row_error"]``: for each
output row ``i``, ``||(W - W_pruned)_i X|| / ||W_i X||`` on the calibration sample; absent without
calibration data, and for the experts of an MoE)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from ..plotting import SERIES_COLORS, palette_color, style_plot, style_widget

ERROR_COLOR = SERIES_COLORS[1]


class MaskView(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QLabel("Click a heatmap cell to see that module's mask.")
        self.title.setWordWrap(True)
        self.glw = pg.GraphicsLayoutWidget()
        style_widget(self.glw)
        self.mask_plot = self.glw.addPlot(row=0, col=0, colspan=2)
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
        self.err_plot = self.glw.addPlot(row=1, col=1)
        self.err_plot.setMenuEnabled(False)
        self.err_plot.hideButtons()
        self.err_plot.setLabel("bottom", "output error of a row")
        self.err_plot.setLabel("left", "rows")
        self.err_plot.setMouseEnabled(x=False, y=False)
        self.err_hist = pg.PlotDataItem(stepMode="center", fillLevel=0, fillOutline=True,
                                        brush=pg.mkBrush(ERROR_COLOR + "99"), pen=pg.mkPen(ERROR_COLOR))
        self.err_plot.addItem(self.err_hist)
        self.no_error = pg.TextItem("", color=palette_color(QPalette.ColorRole.PlaceholderText), anchor=(0.5, 0.5))
        self.err_plot.addItem(self.no_error)
        style_plot(self.err_plot)
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
        self.row_error: np.ndarray | None = None  # the per-row error shown (None: none)
        self._empty_ranges()

    def _empty_ranges(self) -> None:
        self.mask_plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0)
        self.hist_plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0.02)
        self.err_plot.setRange(xRange=(0, 0.5), yRange=(0, 1), padding=0.02)

    def clear(self) -> None:
        self.current = None
        self.title.setText("Click a heatmap cell to see that module's mask.")
        self.mask_image.clear()
        self.hist.setData([], [])
        self._show_row_error(None, "")
        self._empty_ranges()

    def show_module(self, block: int, name: str, sparsity: float, shape: tuple[int, int],
                    mask_image: np.ndarray | None, row_sparsity: np.ndarray | None,
                    row_error: np.ndarray | None = None, output_error: float | None = None) -> None:
        """The mask of module ``name`` of block ``block``; ``row_error`` (one value per output row)
        and the module's ``output_error`` when they were measured."""
        self.current = (block, name)
        dims = f"{shape[0]}×{shape[1]}" if shape and shape[0] else ""
        title = f"Block {block}, {name} {dims}: {sparsity:.1%} zeros"
        if output_error is not None:
            title += f", output error {output_error:.3f}"
        rows = np.asarray(row_error, dtype=np.float64) if row_error is not None and len(row_error) else None
        if rows is not None:
            worst = int(np.argmax(rows))
            title += f" (rows: median {np.median(rows):.3f}, worst {rows[worst]:.3f} in row {worst})"
        self.title.setText(title)
        self._show_row_error(rows, "per-row error not measured" if output_error is None
                             else "per-row error not kept for an expert's matrix")
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

    def _show_row_error(self, rows: np.ndarray | None, why: str) -> None:
        """The histogram of the per-row errors on 0..0.5 (wider when a row is worse), or ``why``."""
        self.row_error = None if rows is None else rows.astype(np.float32)
        if rows is None:
            self.err_hist.setData([], [])
            self.no_error.setText(why)
            self.no_error.setPos(0.25, 0.5)
            self.no_error.setVisible(bool(why))
            self.err_plot.setRange(xRange=(0, 0.5), yRange=(0, 1), padding=0.02)
            return
        top = max(0.5, float(np.ceil(rows.max() * 10) / 10))
        counts, edges = np.histogram(rows, bins=40, range=(0.0, top))
        self.err_hist.setData(edges, counts)
        self.no_error.setVisible(False)
        self.err_plot.setXRange(0, top, padding=0.02)
        self.err_plot.setYRange(0, max(1, counts.max()) * 1.05, padding=0)
