"""A read-only, bounded log pane fed by ``AppState.logged`` (messages and phases of every job)."""

from __future__ import annotations

import time

from PySide6.QtGui import QFontDatabase, QTextCharFormat
from PySide6.QtWidgets import QPlainTextEdit, QWidget

from ..widgets import BAD_COLOR, WARN_COLOR


class LogView(QPlainTextEdit):
    def __init__(self, parent: QWidget | None = None, max_lines: int = 5000) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(max_lines)
        self.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.setPlaceholderText("Messages of the running job appear here.")
        self.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)

    def append_line(self, text: str, level: str = "info") -> None:
        fmt = QTextCharFormat()
        if level == "warning":
            fmt.setForeground(WARN_COLOR)
        elif level == "error":
            fmt.setForeground(BAD_COLOR)
        else:
            fmt.setForeground(self.palette().text())
        bar = self.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 2
        cursor = self.textCursor()
        cursor.movePosition(cursor.MoveOperation.End)
        if not self.document().isEmpty():
            cursor.insertBlock()
        cursor.insertText(f"{time.strftime('%H:%M:%S')}  {text}", fmt)
        if at_end:
            bar.setValue(bar.maximum())

    def lines(self) -> list[str]:
        return self.toPlainText().splitlines()
