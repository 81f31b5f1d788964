"""Driving the window like a user: pick files through (stubbed) dialogs, click, wait on signals."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt

LONG = 60_000


def click(qtbot, button) -> None:
    assert button.isEnabled(), f"{button.text()!r} is disabled"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def load_folder(qtbot, window, monkeypatch, folder: Path) -> None:
    from prunestudio.gui import dialogs

    panel = window.model_panel
    monkeypatch.setattr(dialogs, "get_directory", lambda *a, **k: str(folder))
    click(qtbot, panel.folder.button)
    assert panel.radio["folder"].isChecked()
    panel.device.setCurrentText("cpu")
    click(qtbot, panel.load_button)
    worker = panel.job.worker
    assert worker is not None
    if worker.is_running:
        with qtbot.waitSignal(worker.finished, timeout=LONG):
            pass
    qtbot.waitUntil(lambda: not window.state.busy, timeout=LONG)
    assert window.state.loaded is not None, "the model did not load"


def generate_calibration(qtbot, window, nsamples: int = 8, seqlen: int = 32, events: list | None = None) -> None:
    panel = window.calib_panel
    form = panel.form
    form.kind.setCurrentIndex(form.kind.findData("selfgen"))
    form.nsamples.setValue(nsamples)
    form.seqlen.setValue(seqlen)
    click(qtbot, panel.go)
    worker = panel.job.worker
    assert worker is not None
    if events is not None:
        worker.yielded.connect(events.append)
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    assert window.state.calib is not None


def set_eval(window, path: Path, seqlen: int = 32, windows: int = 4) -> None:
    panel = window.eval_panel
    panel.source.setText(str(path))
    panel.seqlen.setValue(seqlen)
    panel.windows.setValue(windows)


def start_run(qtbot, window):
    window.show_step(3)
    click(qtbot, window.run_panel.start_button)
    worker = window.run_panel.job.worker
    assert worker is not None
    return worker


def screenshot(window, path: Path) -> None:
    """Save what the window shows, once the layouts of just-shown panels have settled."""
    from PySide6.QtWidgets import QApplication

    for _ in range(3):
        QApplication.processEvents()
    img = window.grab()
    assert not img.isNull()
    img.save(str(path))
