"""Standard dialogs in one place: file pickers that remember their folder, and confirmations.

Panels call these through the module (``dialogs.get_open_file(...)``) so tests can replace them
with ``monkeypatch.setattr(dialogs, "get_open_file", ...)`` and never block on a modal dialog.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget

from .settings import Settings

_dirs = Settings("dialogs")


def _start_dir(key: str, current: str = "") -> str:
    if current:
        p = Path(current).expanduser()
        return str(p if p.is_dir() else p.parent)
    return _dirs.get(key, str(Path.home()))


def _remember(key: str, path: str) -> None:
    if path:
        p = Path(path)
        _dirs.set(key, str(p if p.is_dir() else p.parent))


def get_open_file(parent: QWidget | None, title: str, filters: str, key: str, current: str = "") -> str:
    path, _ = QFileDialog.getOpenFileName(parent, title, _start_dir(key, current), filters)
    _remember(key, path)
    return path


def get_save_file(parent: QWidget | None, title: str, filters: str, key: str, suggested: str = "") -> str:
    start = _start_dir(key)
    if suggested:
        start = str(Path(start) / suggested)
    path, _ = QFileDialog.getSaveFileName(parent, title, start, filters)
    _remember(key, path)
    return path


def get_directory(parent: QWidget | None, title: str, key: str, current: str = "") -> str:
    path = QFileDialog.getExistingDirectory(parent, title, _start_dir(key, current))
    _remember(key, path)
    return path


def confirm(parent: QWidget | None, title: str, text: str, informative: str = "",
            yes: str = "Continue", no: str = "Cancel") -> bool:
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(title)
    box.setText(text)
    if informative:
        box.setInformativeText(informative)
    ok = box.addButton(yes, QMessageBox.ButtonRole.AcceptRole)
    cancel = box.addButton(no, QMessageBox.ButtonRole.RejectRole)
    box.setDefaultButton(cancel)
    box.setEscapeButton(cancel)
    box.exec()
    return box.clickedButton() is ok
