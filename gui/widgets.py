"""Small reusable widgets and formatting helpers (no application logic)."""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPainter, QPainterPath, QPalette, QPen, QPixmap
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSizePolicy,
    QSpinBox,
    QStyle,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from . import dialogs

# status colours that read on light and dark backgrounds alike (mid saturation, mid lightness)
OK_COLOR = QColor("#3a9d5d")
WARN_COLOR = QColor("#d08a1e")
BAD_COLOR = QColor("#d0493a")


def hint_label(text: str = "", parent: QWidget | None = None) -> QLabel:
    """A secondary, wrapped explanation in the palette's placeholder colour."""
    lab = QLabel(text, parent)
    lab.setWordWrap(True)
    lab.setObjectName("hint")
    lab.setForegroundRole(QPalette.ColorRole.PlaceholderText)
    lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return lab


_ICONS: dict[tuple[str, int, int], QIcon] = {}


def status_icon(kind: str, size: int = 16) -> QIcon:
    """``ok`` (check in a green disc), ``busy`` (half disc), ``warn`` (!), ``todo`` (ring)."""
    from PySide6.QtWidgets import QApplication

    pal = QApplication.palette()
    key = (kind, size, pal.cacheKey())
    if key not in _ICONS:
        _ICONS[key] = _draw_status_icon(kind, size, pal)
    return _ICONS[key]


def _draw_status_icon(kind: str, size: int, pal: QPalette) -> QIcon:
    pm = QPixmap(size * 2, size * 2)
    pm.setDevicePixelRatio(2.0)
    pm.fill(Qt.GlobalColor.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    r = QRectF(1.5, 1.5, size - 3, size - 3)
    if kind == "ok":
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(OK_COLOR)
        p.drawEllipse(r)
        pen = QPen(QColor("white"), max(1.6, size / 9))
        pen.setCapStyle(Qt.PenCapStyle.RoundCap)
        p.setPen(pen)
        path = QPainterPath(QPointF(size * 0.28, size * 0.52))
        path.lineTo(size * 0.44, size * 0.68)
        path.lineTo(size * 0.73, size * 0.34)
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawPath(path)
    elif kind == "warn":
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(WARN_COLOR)
        p.drawEllipse(r)
        p.setPen(QPen(QColor("white"), max(1.6, size / 8)))
        p.drawLine(QPointF(size / 2, size * 0.27), QPointF(size / 2, size * 0.58))
        p.drawPoint(QPointF(size / 2, size * 0.74))
    elif kind == "busy":
        hl = pal.color(QPalette.ColorRole.Highlight)
        p.setPen(QPen(hl, 1.6))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawEllipse(r)
        p.setBrush(hl)
        p.drawPie(r, 90 * 16, -180 * 16)
    else:  # todo
        p.setPen(QPen(pal.color(QPalette.ColorRole.PlaceholderText), 1.6))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawEllipse(r)
    p.end()
    return QIcon(pm)


class ElidedLabel(QLabel):
    """One line, elided at the right when too narrow; the full text is in the tooltip."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._full = ""
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802
        self._full = text
        self.setToolTip(text)
        self._elide()

    def resizeEvent(self, event) -> None:  # noqa: ANN001, N802
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        elided = self.fontMetrics().elidedText(self._full, Qt.TextElideMode.ElideRight, max(self.width(), 40))
        super().setText(elided)


class StatusLine(QWidget):
    """An icon and a wrapped sentence: ok / warn / error / info."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.icon = QLabel()
        self.icon.setFixedSize(QSize(18, 18))
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.icon, 0, Qt.AlignmentFlag.AlignTop)
        lay.addWidget(self.text, 1)
        self.set("", "")

    def set(self, kind: str, text: str) -> None:
        self.text.setText(text)
        self.setVisible(bool(text))
        if kind in ("ok", "warn", "busy", "todo"):
            self.icon.setPixmap(status_icon(kind, 16).pixmap(16, 16))
        elif kind == "error":
            self.icon.setPixmap(self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxCritical).pixmap(16, 16))
        elif kind == "info":
            self.icon.setPixmap(self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxInformation).pixmap(16, 16))
        else:
            self.icon.clear()
        self.kind = kind


class PathEdit(QWidget):
    """A line edit with a Browse... button: ``mode`` is ``open``, ``save`` or ``dir``."""

    changed = Signal(str)

    def __init__(self, mode: str = "open", title: str = "Choose", filters: str = "All files (*)",
                 key: str = "files", placeholder: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.mode, self.title, self.filters, self.key = mode, title, filters, key
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.edit.setClearButtonEnabled(True)
        self.button = QToolButton()
        self.button.setText("Browse…")
        self.button.setToolTip(title)
        lay.addWidget(self.edit, 1)
        lay.addWidget(self.button)
        self.button.clicked.connect(self.browse)
        self.edit.textChanged.connect(self.changed)
        self.setFocusProxy(self.edit)

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str) -> None:  # noqa: N802 - Qt naming
        self.edit.setText(text)

    def browse(self) -> None:
        if self.mode == "dir":
            path = dialogs.get_directory(self, self.title, self.key, self.text())
        elif self.mode == "save":
            path = dialogs.get_save_file(self, self.title, self.filters, self.key)
        else:
            path = dialogs.get_open_file(self, self.title, self.filters, self.key, self.text())
        if path:
            self.edit.setText(path)


class Collapsible(QWidget):
    """A header button that shows or hides ``content`` (for "Advanced" settings)."""

    def __init__(self, title: str, content: QWidget, expanded: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setAutoRaise(True)
        self.content = content
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.toggle)
        lay.addWidget(content)
        self.toggle.toggled.connect(self._apply)
        self.toggle.setChecked(expanded)
        self._apply(expanded)

    def _apply(self, on: bool) -> None:
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.content.setVisible(on)


def spin(lo: int, hi: int, value: int, tip: str, step: int = 1, suffix: str = "") -> QSpinBox:
    w = QSpinBox()
    w.setRange(lo, hi)
    w.setSingleStep(step)
    w.setValue(value)
    w.setToolTip(tip)
    w.setAccelerated(True)
    if suffix:
        w.setSuffix(suffix)
    w.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
    return w


def dspin(lo: float, hi: float, value: float, tip: str, decimals: int = 2, step: float = 0.05,
          suffix: str = "") -> QDoubleSpinBox:
    w = QDoubleSpinBox()
    w.setDecimals(decimals)
    w.setRange(lo, hi)
    w.setSingleStep(step)
    w.setValue(value)
    w.setToolTip(tip)
    w.setAccelerated(True)
    if suffix:
        w.setSuffix(suffix)
    return w


def fmt_count(n: float | None) -> str:
    if n is None:
        return "–"
    n = float(n)
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def fmt_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "–"
    s = max(0.0, s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}:{sec:02d} min"
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d} h"


def fmt_float(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def layout_reading_order(root: QWidget) -> list[QWidget]:
    """``root``'s keyboard-focusable descendants in the reading order of its layouts.

    Form rows label-then-field, grids row by row, boxes in order, nested widgets (group boxes,
    collapsible sections, composite editors) where they sit: the order a user reads the panel in,
    whatever order the widgets were created in.
    """
    from PySide6.QtWidgets import QAbstractScrollArea, QGridLayout, QSplitter, QTabWidget

    out: list[QWidget] = []

    def visit_widget(w: QWidget) -> None:
        if w.focusPolicy() & Qt.FocusPolicy.TabFocus and w.focusProxy() is None:
            out.append(w)
        if isinstance(w, QTabWidget) and w.tabBar().focusPolicy() & Qt.FocusPolicy.TabFocus:
            out.append(w.tabBar())  # the tab widget's focus proxy: its tabs come before its pages
        if isinstance(w, (QSplitter, QTabWidget)):  # each pane or page in order (after a tab bar)
            for i in range(w.count()):
                visit_widget(w.widget(i))
        elif isinstance(w, QAbstractScrollArea):  # a view (table, text, plot) is one stop
            return
        elif w.layout() is not None:
            visit_layout(w.layout())

    def visit_layout(lay) -> None:  # noqa: ANN001 - any QLayout
        items = [lay.itemAt(i) for i in range(lay.count())]
        if isinstance(lay, QGridLayout):
            pos = {id(it): lay.getItemPosition(i)[:2] for i, it in enumerate(items)}
            items.sort(key=lambda it: pos[id(it)])
        for it in items:
            if it.widget() is not None:
                visit_widget(it.widget())
            elif it.layout() is not None:
                visit_layout(it.layout())

    if root.layout() is not None:
        visit_layout(root.layout())
    return out


def chain_tab_order(root: QWidget) -> list[QWidget]:
    """Make Tab follow :func:`layout_reading_order` inside ``root``; returns that order."""
    order = layout_reading_order(root)
    for a, b in zip(order, order[1:]):
        QWidget.setTabOrder(a, b)
    return order
