"""The calibration samples as a table: keep/drop checkbox, tokens, perplexity, status, text.

The model edits the :class:`CalibSample` objects of the current set in place (``dropped`` and
``drop_reason``); the set itself decides what the pruner uses (``CalibrationSet.kept()``). During
generation rows arrive one by one from ``SampleGenerated`` events, before the set exists.
"""

from __future__ import annotations

import math
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QAction, QFont, QKeySequence, QPalette
from PySide6.QtWidgets import QAbstractItemView, QApplication, QHeaderView, QTableView, QWidget

from ...core.calib.calibset import CalibSample

BY_HAND = "dropped by hand"
COLUMNS = ("Use", "#", "Tokens", "Perplexity", "Status", "Text")
_Index = QModelIndex | QPersistentModelIndex


class SampleTableModel(QAbstractTableModel):
    edited = Signal()  # the user kept or dropped samples

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.samples: list[CalibSample] = []
        self._ntok: list[int] = []
        self.editable = True

    # ---- filling ----------------------------------------------------------------------------
    def set_samples(self, samples: list[CalibSample]) -> None:
        self.beginResetModel()
        self.samples = samples
        self._ntok = [s.num_tokens for s in samples]
        self.endResetModel()

    def clear(self) -> None:
        self.set_samples([])

    def append_live(self, text: str, num_tokens: int, perplexity: float | None) -> None:
        n = len(self.samples)
        self.beginInsertRows(QModelIndex(), n, n)
        self.samples.append(CalibSample(input_ids=[], text=text, perplexity=perplexity))
        self._ntok.append(num_tokens)
        self.endInsertRows()

    def mark_filtered(self, indices: tuple[int, ...], threshold: float) -> None:
        for i in indices:
            if 0 <= i < len(self.samples):
                s = self.samples[i]
                s.dropped = True
                s.drop_reason = f"filtered: perplexity above {threshold:.1f}"
        if self.samples:
            self.dataChanged.emit(self.index(0, 0), self.index(len(self.samples) - 1, len(COLUMNS) - 1))

    def set_dropped(self, rows: list[int], dropped: bool) -> int:
        changed = 0
        for r in rows:
            if not (0 <= r < len(self.samples)):
                continue
            s = self.samples[r]
            if s.dropped == dropped:
                continue
            s.dropped = dropped
            s.drop_reason = BY_HAND if dropped else ""
            changed += 1
            self.dataChanged.emit(self.index(r, 0), self.index(r, len(COLUMNS) - 1))
        if changed:
            self.edited.emit()
        return changed

    # ---- Qt model ---------------------------------------------------------------------------
    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self.samples)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.ToolTipRole:
            return ("Untick (or press Delete) to leave a sample out of the pruning.", "Sample number",
                    "Number of tokens", "Perplexity of the sample under the model (lower: more typical text)",
                    "Kept, or why the sample is left out", "The sample's text")[section]
        return None

    def flags(self, index: _Index) -> Qt.ItemFlag:
        f = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if index.column() == 0 and self.editable:
            f |= Qt.ItemFlag.ItemIsUserCheckable
        return f

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        s = self.samples[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.CheckStateRole and col == 0:
            return Qt.CheckState.Unchecked if s.dropped else Qt.CheckState.Checked
        if role == Qt.ItemDataRole.DisplayRole:
            if col == 1:
                return index.row()
            if col == 2:
                return self._ntok[index.row()]
            if col == 3:
                p = s.perplexity
                return "–" if p is None or not math.isfinite(p) else f"{p:.2f}"
            if col == 4:
                return s.drop_reason or ("dropped" if s.dropped else "kept")
            if col == 5:
                t = s.text.replace("\n", " ⏎ ")
                return t[:240] + ("…" if len(t) > 240 else "")
        if role == Qt.ItemDataRole.ToolTipRole and col in (4, 5):
            return s.drop_reason if col == 4 and s.drop_reason else s.text[:1000]
        if role == Qt.ItemDataRole.ForegroundRole and s.dropped:
            return QApplication.palette().brush(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text)
        if role == Qt.ItemDataRole.FontRole and s.dropped:
            f = QFont()
            f.setItalic(True)
            return f
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (1, 2, 3):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def setData(self, index: _Index, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:  # noqa: N802
        if role == Qt.ItemDataRole.CheckStateRole and index.column() == 0 and self.editable:
            checked = Qt.CheckState(value) == Qt.CheckState.Checked if not isinstance(value, bool) else value
            return self.set_dropped([index.row()], not checked) > 0
        return False


class SampleTable(QTableView):
    """The table view: Delete drops the selected samples, Insert keeps them again."""

    selected_sample = Signal(int)

    def __init__(self, model: SampleTableModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setModel(model)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setAlternatingRowColors(True)
        self.setWordWrap(False)
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 8)
        hh = self.horizontalHeader()
        for c in range(4):
            hh.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        hh.setSectionResizeMode(4, QHeaderView.ResizeMode.Interactive)  # long reasons: elided, in the tooltip
        self.setColumnWidth(4, 150)
        hh.setSectionResizeMode(len(COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)
        self.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.setAccessibleName("Calibration samples")
        drop = QAction("Drop selected samples", self)
        drop.setShortcuts([QKeySequence(Qt.Key.Key_Delete), QKeySequence(Qt.Key.Key_Backspace)])
        drop.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        drop.triggered.connect(lambda: self._set_selected(True))
        keep = QAction("Keep selected samples", self)
        keep.setShortcut(QKeySequence(Qt.Key.Key_Insert))
        keep.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        keep.triggered.connect(lambda: self._set_selected(False))
        self.addActions([drop, keep])
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        self.selectionModel().currentRowChanged.connect(lambda cur, _prev: self.selected_sample.emit(cur.row()))

    def sample_model(self) -> SampleTableModel:
        return self.model()  # type: ignore[return-value]

    def selected_rows(self) -> list[int]:
        return sorted({i.row() for i in self.selectionModel().selectedRows()})

    def _set_selected(self, dropped: bool) -> None:
        if self.sample_model().editable:
            self.sample_model().set_dropped(self.selected_rows(), dropped)
