"""The app's "CPU threads" setting (Prune step, Advanced; issue 19, item 6): it reaches the jobs,
the run's report records it, and it is remembered."""

from __future__ import annotations

import pytest
from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import LONG, load_folder, start_run
from prunestudio.core.model import threads


@pytest.fixture(autouse=True)
def _auto_afterwards():
    yield
    threads.set_requested(None)


def test_threads_setting_reaches_the_run_and_is_remembered(window, qtbot, monkeypatch, tiny_model_dir,
                                                          error_dialogs):
    from prunestudio.gui.panels.prune import PrunePanel

    p = window.prune_panel
    assert p.threads.value() == 0 and p.threads.text() == "auto" and threads.requested() is None
    assert "auto takes the CPUs" in p.threads.toolTip()
    p.threads.setValue(1)
    assert threads.requested() == 1

    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    p.method.setCurrentIndex(p.method.findData("magnitude"))
    window.run_panel.eval_dense.setChecked(False)
    window.run_panel.eval_pruned.setChecked(False)
    logged: list[str] = []
    window.state.logged.connect(lambda text, _level: logged.append(text))
    worker = start_run(qtbot, window)
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    qtbot.waitUntil(lambda: not window.state.busy, timeout=LONG)
    assert error_dialogs == []
    assert window.state.run.report["threads"]["requested"] == 1
    assert window.state.run.report["threads"]["threads"] == 1
    assert "Threads: 1 thread(s) as asked." in logged

    threads.set_requested(None)
    again = PrunePanel(window.state)  # a new window: the setting comes back
    qtbot.addWidget(again)
    assert again.threads.value() == 1 and threads.requested() == 1
    again.threads.setValue(0)
    assert threads.requested() is None
