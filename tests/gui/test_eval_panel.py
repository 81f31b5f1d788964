"""Step 5 (gui/panels/eval.py): zero-shot tasks from local files; what a perplexity was measured on."""

from __future__ import annotations

from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import LONG, click, load_folder, set_eval, start_run


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


def test_a_pruned_perplexity_says_what_it_read_in_the_table_history_and_card(
        window, qtbot, monkeypatch, tiny_model_dir, tmp_path, error_dialogs):
    """The newcomer's case: a run that evaluated nothing, then "Evaluate pruned" with a window
    limit above what the text holds; the table, the status, the history and the export's card give
    the windows actually read (counted from the perplexity loop's own progress events)."""
    import re

    from conftest import CORPUS

    text = tmp_path / "short.txt"
    text.write_text((CORPUS + "\n") * 3, encoding="utf-8")
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    p = window.prune_panel
    p.method.setCurrentIndex(p.method.findData("magnitude"))  # no calibration set needed
    window.run_panel.eval_dense.setChecked(False)
    window.run_panel.eval_pruned.setChecked(False)
    worker = start_run(qtbot, window)
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    qtbot.waitUntil(lambda: not window.state.busy, timeout=LONG)

    e = window.eval_panel
    window.show_step(4)
    set_eval(window, text, seqlen=64, windows=1000)
    logged: list[str] = []
    window.state.logged.connect(lambda text, _level: logged.append(text))
    click(qtbot, e.pruned_button)
    with qtbot.waitSignal(e.job.worker.finished, timeout=LONG):
        pass
    qtbot.waitUntil(lambda: not window.state.busy, timeout=LONG)
    totals = [int(m.group(1)) for t in logged if (m := re.match(r"ppl-pruned: started \((\d+) steps\)", t))]
    assert len(totals) == 1 and 2 < totals[0] < 1000, logged
    n = totals[0]
    cols = {e.ppl_table.horizontalHeaderItem(c).text(): c for c in range(e.ppl_table.columnCount())}
    assert e.ppl_table.rowCount() == 1
    assert [e.ppl_table.item(0, cols[k]).text() for k in ("Evaluation text", "Window", "Windows read")] \
        == ["short.txt", "64", str(n)]
    assert f"on short.txt, {n} windows of 64 tokens" in e.status.text.text()

    row = window.state.history().runs()[-1]
    assert (row.ppl_text, row.ppl_seqlen, row.ppl_windows) == ("short.txt", 64, n) and row.ppl_pruned > 1

    e.out_dir.setText(str(tmp_path / "exported"))
    click(qtbot, e.export_button)
    with qtbot.waitSignal(e.job.worker.finished, timeout=LONG):
        pass
    card = (tmp_path / "exported" / "README.md").read_text(encoding="utf-8")
    assert f"Perplexity on short.txt, {n} windows of 64 tokens: pruned " in card
    assert error_dialogs == []
