"""Step 5 (gui/panels/eval.py): zero-shot tasks from local files."""

from __future__ import annotations

from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import LONG, click, load_folder


def test_zero_shot_on_local_task_files(window, qtbot, monkeypatch, tiny_model_dir, shared_data, error_dialogs):
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    e = window.eval_panel
    window.show_step(4)
    e.task_boxes["arc_easy"].setChecked(True)
    e.task_dir.setText(str(shared_data / "eval"))
    e.limit.setValue(4)
    click(qtbot, e.zs_button)
    with qtbot.waitSignal(e.job.worker.finished, timeout=LONG):
        pass
    assert error_dialogs == []
    assert e.zs_table.rowCount() == 1
    assert e.zs_table.item(0, 0).text() == "dense" and e.zs_table.item(0, 4).text() == "4"
