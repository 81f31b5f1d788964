"""The dense baseline always available (issue 19, item 3): after pruning, "Evaluate dense" measures
the original model (a second copy, let go afterwards) or shows the cached number at once, while the
pruned model stays exportable; the Evaluate step shows dense, pruned and the change; the Run step's
boxes act when they can and say why when they cannot."""

from __future__ import annotations

from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import LONG, click, load_folder, set_eval, start_run


def _wait(qtbot, window, panel) -> None:
    worker = panel.job.worker
    if worker is not None and worker.is_running:
        with qtbot.waitSignal(worker.finished, timeout=LONG):
            pass
    qtbot.waitUntil(lambda: not window.state.busy, timeout=LONG)


def _row(table, row=0):
    cols = {table.horizontalHeaderItem(c).text(): c for c in range(table.columnCount())}
    return {k: table.item(row, c).text() for k, c in cols.items()}


def test_run_boxes_say_why_they_cannot_act(window, qtbot, monkeypatch, tiny_model_dir, eval_file):
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    r = window.run_panel
    window.show_step(3)
    assert window.state.eval_settings is None
    for box in (r.eval_dense, r.eval_pruned):
        assert not box.isEnabled() and "step 5" in box.toolTip()
    assert "no evaluation text" in r.eval_note.text()
    set_eval(window, eval_file, seqlen=16, windows=2)
    for box in (r.eval_dense, r.eval_pruned):
        assert box.isEnabled() and eval_file.name in box.toolTip()
    assert r.eval_note.text() == ""
    # the dense number known: the box says the run reports it without measuring it again
    window.state.dense_cache[window.state.eval_settings.cache_key(window.state.model_args)] = 9.5
    window.state.config_changed.emit()
    assert "is known (9.500)" in r.eval_dense.toolTip()


def test_evaluate_dense_after_pruning(window, qtbot, monkeypatch, tiny_model_dir, eval_file, error_dialogs):
    from prunestudio.core.run import evaluation

    loads: list = []
    real = evaluation.iter_load

    def counting(args, should_stop=None):
        loads.append(args)
        return (yield from real(args, should_stop))

    monkeypatch.setattr(evaluation, "iter_load", counting)
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    st = window.state
    assert st.dense_signature  # taken when the model was loaded
    p = window.prune_panel
    p.method.setCurrentIndex(p.method.findData("magnitude"))
    set_eval(window, eval_file, seqlen=16, windows=2)
    window.run_panel.eval_dense.setChecked(False)  # the newcomer's run: no dense number
    window.run_panel.eval_pruned.setChecked(True)
    worker = start_run(qtbot, window)
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    qtbot.waitUntil(lambda: not st.busy, timeout=LONG)
    pruned_model = st.loaded
    e = window.eval_panel
    window.show_step(4)
    row = _row(e.ppl_table)
    assert row["Dense"] == "–" and row["Pruned"] != "–" and row["Change"] == "–"
    assert e.dense_button.isEnabled() and "second copy" in e.dense_button.toolTip()

    click(qtbot, e.dense_button)
    _wait(qtbot, window, e)
    assert error_dialogs == []
    assert len(loads) == 1  # one second copy
    assert st.loaded is pruned_model and st.exportable()  # the pruned model is kept
    row = _row(e.ppl_table)
    dense, pruned = float(row["Dense"]), float(row["Pruned"])
    assert dense > 1 and pruned > 1 and row["Change"] == f"{(pruned / dense - 1) * 100:+.1f} %"
    assert "Dense perplexity" in e.status.text.text() and "against dense" in e.status.text.text()
    # the run's report and its history row now carry the dense number too
    assert st.run.report["ppl_dense"] == st.cached_dense()
    assert st.history().runs()[-1].ppl_dense == st.cached_dense()

    # pressed again: shown at once, nothing loaded or started
    click(qtbot, e.dense_button)
    assert e.job.worker is None or not e.job.worker.is_running
    assert "measured before" in e.status.text.text() and len(loads) == 1

    # as after a restart of the app: the window forgot it, the cache of dense results did not;
    # "Evaluate pruned" brings the dense number with it, without a second copy
    st.dense_cache.clear()
    click(qtbot, e.pruned_button)
    _wait(qtbot, window, e)
    row = _row(e.ppl_table)
    assert float(row["Dense"]) == dense and row["Change"] != "–" and len(loads) == 1

    # and it can still be exported
    assert e.export_button.isEnabled()


def test_a_second_copy_that_may_not_fit_is_asked_about(window, qtbot, monkeypatch, tiny_model_dir, eval_file,
                                                       confirm_answers):
    from prunestudio.gui.panels import eval as eval_panel

    answers, asked = confirm_answers
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    st = window.state
    p = window.prune_panel
    p.method.setCurrentIndex(p.method.findData("magnitude"))
    set_eval(window, eval_file, seqlen=16, windows=2)
    window.run_panel.eval_dense.setChecked(False)
    window.run_panel.eval_pruned.setChecked(False)
    worker = start_run(qtbot, window)
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    qtbot.waitUntil(lambda: not st.busy, timeout=LONG)
    import prunestudio.core.model.memory as mem

    monkeypatch.setattr(mem, "available_memory", lambda device: {"host_available": 1, "device_free": None})
    answers.append(False)
    e = window.eval_panel
    click(qtbot, e.dense_button)
    assert asked and "second copy" in asked[-1]
    assert e.job.worker is None or not e.job.worker.is_running
    assert st.cached_dense() is None
    assert eval_panel.DENSE_NOTE in e.ppl_note.text()
