"""pyqtgraph set-up shared by the plots: colours taken from the Qt palette (light or dark theme).

No global ``pg.setConfigOption``: each plot widget gets the palette's base colour as background
and the text colour for axes, so every plot reads in both themes and follows a theme change.
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

# categorical colours with enough contrast on white and on near-black backgrounds
SERIES_COLORS = ("#1f77b4", "#e6550d", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#17becf", "#bcbd22", "#7f7f7f")


def palette_color(role: QPalette.ColorRole, group: QPalette.ColorGroup = QPalette.ColorGroup.Active) -> QColor:
    return QApplication.palette().color(group, role)


def style_plot(plot: pg.PlotItem) -> None:
    text = palette_color(QPalette.ColorRole.Text)
    for name in ("left", "bottom", "right", "top"):
        ax = plot.getAxis(name)
        ax.setPen(pg.mkPen(text))
        ax.setTextPen(pg.mkPen(text))
        ax.enableAutoSIPrefix(False)  # "sparsity (x0.001)" reads worse than plain numbers
    title = plot.titleLabel.text
    if title:
        plot.setTitle(title, color=text.name())
    if plot.legend is not None:
        plot.legend.setLabelTextColor(text)


def set_title(plot: pg.PlotItem, text: str) -> None:
    plot.setTitle(text, color=palette_color(QPalette.ColorRole.Text).name())


def style_widget(w: pg.GraphicsView) -> None:
    w.setBackground(palette_color(QPalette.ColorRole.Base))


def plot_widget(**kw) -> pg.PlotWidget:
    w = pg.PlotWidget(**kw)
    style_widget(w)
    style_plot(w.getPlotItem())
    return w
