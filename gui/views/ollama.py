"""The "Open in Ollama" dialog: the Modelfile written beside the export and the command that imports it."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ...core.run.ollama import OllamaModelfile, ollama_name
from ..widgets import hint_label


class OllamaDialog(QDialog):
    """Shows ``command`` with a Copy button, what Ollama will make of the folder, and the Modelfile."""

    def __init__(self, path: Path, modelfile: OllamaModelfile, command: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Open in Ollama")
        self.resize(720, 480)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel(f"Wrote <b>{path.name}</b> in {path.parent}. Import the model with:"))
        row = QHBoxLayout()
        self.command = QLineEdit(command)
        self.command.setReadOnly(True)
        self.command.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.copy_button = QPushButton("&Copy")
        self.copy_button.setToolTip("Copy the command to the clipboard.")
        row.addWidget(self.command, 1)
        row.addWidget(self.copy_button)
        lay.addLayout(row)
        self.warning = QLabel()
        self.warning.setWordWrap(True)
        if modelfile.warning():
            self.warning.setText(f"⚠ {modelfile.warning()}")
        self.warning.setVisible(bool(modelfile.warning()))
        lay.addWidget(self.warning)
        conv = modelfile.conversion
        lay.addWidget(hint_label(
            (f"Chat template: {conv.format.name} format, written as Ollama's TEMPLATE"
             + (" with the model's default system prompt." if conv.system is not None else ".")
             if conv.format is not None else
             f"Chat template: not converted: {conv.reason}. Ollama picks the closest of its own templates.")
            + f" Then chat with: ollama run {ollama_name(path.parent.name)}. Ollama stores the weights in 16 bits "
            "(--quantize q4_K_M for 4 bits); the zeros make it no faster or smaller there."))
        self.text = QPlainTextEdit(modelfile.text)
        self.text.setReadOnly(True)
        self.text.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.text.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        lay.addWidget(self.text, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        self.copy_button.clicked.connect(self.copy)

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.command.text())
        self.copy_button.setText("Copied")
