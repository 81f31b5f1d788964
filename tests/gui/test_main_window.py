"""The main window: keyboard shortcuts, and its settings (isolated in tests) and geometry kept."""

from __future__ import annotations

from pathlib import Path

from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import LONG, load_folder
from prunestudio.gui.state import RunStatus
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest


def test_keyboard_shortcuts(window, qtbot, monkeypatch, tiny_model_dir):
    window.activateWindow()
    window.setFocus()
    for i in range(1, 7):
        QTest.keyClick(window, Qt.Key(Qt.Key.Key_0 + i), Qt.KeyboardModifier.ControlModifier)
        assert window.steps.currentRow() == i - 1
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    p = window.prune_panel
    p.method.setCurrentIndex(p.method.findData("magnitude"))
    window.run_panel.eval_dense.setChecked(False)
    QTest.keyClick(window, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)
    assert window.steps.currentRow() == 3
    worker = window.run_panel.job.worker
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    assert window.state.run_status == RunStatus.DONE


def test_settings_are_isolated_and_window_state_persists(window, qtbot, tmp_path):
    from prunestudio.gui.main_window import MainWindow
    from prunestudio.gui.settings import qsettings

    assert Path(qsettings().fileName()).is_relative_to(tmp_path)
    assert window.model_panel.kind() == "demo"  # first start: the demo model is preselected
    window.show_step(2)
    window.close()
    again = MainWindow(window.state)
    qtbot.addWidget(again)
    assert again.steps.currentRow() == 2
