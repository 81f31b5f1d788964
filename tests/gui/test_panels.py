"""Panel features beyond the main flow: OWL chart, memory warning, saved sets, zero-shot, keys."""

from __future__ import annotations

import numpy as np
import pytest
from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import LONG, click, generate_calibration, load_folder, screenshot, start_run
from prunestudio.core.calib import selfgen
from prunestudio.core.calib.calibset import CalibrationSet
from prunestudio.core.events import AllocationComputed
from prunestudio.gui import dialogs
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest


def test_owl_allocation_chart_and_heatmap(window, qtbot, monkeypatch, tiny_model_dir, screenshots, error_dialogs):
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    generate_calibration(qtbot, window, nsamples=8, seqlen=32)
    p = window.prune_panel
    p.method.setCurrentIndex(p.method.findData("wanda"))
    p.sparsity.setValue(50.0)
    p.owl.setChecked(True)
    p.owl_m.setValue(1.5)
    p.owl_lambda.setValue(0.2)
    window.run_panel.eval_dense.setChecked(False)
    window.run_panel.eval_pruned.setChecked(False)
    worker = start_run(qtbot, window)
    alloc = []
    worker.yielded.connect(lambda ev: alloc.append(ev) if isinstance(ev, AllocationComputed) else None)
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    assert window.state.run_status == "done"
    assert len(alloc) == 1
    np.testing.assert_allclose(window.run_panel.owl.values, alloc[0].block_sparsity)
    assert window.run_panel.tabs.isTabEnabled(1)
    heat = window.run_panel.heatmap.values()
    np.testing.assert_allclose(heat.mean(axis=1), window.state.result.block_sparsity, atol=0.02)
    window.run_panel.tabs.setCurrentIndex(1)
    screenshot(window, screenshots / "run-owl.png")
    assert error_dialogs == []


def test_memory_warning_before_a_run_that_cannot_fit(window, qtbot, monkeypatch, tiny_model_dir, confirm_answers):
    answers, asked = confirm_answers
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    p = window.prune_panel
    p.method.setCurrentIndex(p.method.findData("magnitude"))
    monkeypatch.setattr(type(window.state), "memory_verdict",
                        lambda self: ("warn", "This run needs about 900 GiB. It will probably not fit."))
    answers.append(False)  # the user says no
    assert window.run_panel.start() is False
    assert asked and "900 GiB" in asked[0]
    assert window.state.run_status == "none" and not window.state.busy


def test_save_and_open_a_calibration_set(window, qtbot, monkeypatch, tiny_model_dir, tmp_path):
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    generate_calibration(qtbot, window, nsamples=4, seqlen=24)
    panel = window.calib_panel
    panel.model.set_dropped([0], True)  # dropped by hand, kept in the file
    path = tmp_path / "set.jsonl"
    monkeypatch.setattr(dialogs, "get_save_file", lambda *a, **k: str(path))
    click(qtbot, panel.save_button)
    saved = CalibrationSet.load(path)
    assert saved.samples[0].dropped and saved.samples[0].drop_reason == "dropped by hand"

    window.state.set_calib(None)
    assert panel.model.rowCount() == 0
    monkeypatch.setattr(dialogs, "get_open_file", lambda *a, **k: str(path))
    click(qtbot, panel.open_button)
    with qtbot.waitSignal(panel.worker.finished, timeout=LONG):
        pass
    cs = window.state.calib
    assert cs is not None and cs.sha256() == saved.sha256() and cs.samples[0].dropped
    assert panel.kind.currentData() == "saved" and window.state.calib_config.source == str(path)
    assert panel.model.rowCount() == len(saved.samples)


def test_calibration_preview_follows_the_text_being_written(window, qtbot, monkeypatch, tiny_model_dir):
    """While a batch is decoded the preview shows its first sample growing; a sample the user picks
    stays in the preview; at the end the first sample is shown if nothing was picked."""
    monkeypatch.setattr(selfgen, "_STEP_PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(selfgen, "fitting_batch", lambda model, requested, *a: min(requested, 4))
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    window.show_step(1)
    panel = window.calib_panel
    panel.kind.setCurrentIndex(panel.kind.findData("selfgen"))
    panel.nsamples.setValue(6)
    panel.seqlen.setValue(16)
    shown: list[tuple[object, str]] = []  # (event, preview text once the panel has handled it)

    def after_panel(ev) -> None:  # connected after the panel's own slot, so it sees the result
        if isinstance(ev, (selfgen.SampleInProgress, selfgen.SampleGenerated)):
            shown.append((ev, panel.text.toPlainText()))
        if isinstance(ev, selfgen.SampleGenerated) and ev.index == 1:
            panel.table.selectRow(1)  # the user picks a finished sample while the next batch runs

    click(qtbot, panel.go)
    panel.worker.yielded.connect(after_panel)
    with qtbot.waitSignal(panel.worker.finished, timeout=LONG):
        pass
    picked = next(i for i, (ev, _) in enumerate(shown) if isinstance(ev, selfgen.SampleGenerated) and ev.index == 1)
    live_before = [(ev, text) for ev, text in shown[:picked] if isinstance(ev, selfgen.SampleInProgress)]
    assert live_before and all(ev.index == 0 for ev, _ in live_before)
    for ev, text in live_before:
        assert text.startswith(f"Writing sample 0 · {ev.num_tokens} of 16 tokens") and text.endswith(ev.text)
    later = [text for ev, text in shown[picked + 1:] if isinstance(ev, selfgen.SampleInProgress)]
    assert later, "a second batch was decoded"
    sample_1 = window.state.calib.samples[1].text
    assert all(text.endswith(sample_1) and not text.startswith("Writing") for text in later)
    assert panel.table.currentIndex().row() == 1 and panel.text.toPlainText().endswith(sample_1)

    # another run, nothing picked: the first sample is shown at the end
    click(qtbot, panel.go)
    with qtbot.waitSignal(panel.worker.finished, timeout=LONG):
        pass
    assert panel.table.currentIndex().row() == 0
    assert panel.text.toPlainText().endswith(window.state.calib.samples[0].text)


def test_zero_shot_on_local_task_files(window, qtbot, monkeypatch, tiny_model_dir, shared_data, error_dialogs):
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    e = window.eval_panel
    window.show_step(4)
    e.task_boxes["arc_easy"].setChecked(True)
    e.task_dir.setText(str(shared_data / "eval"))
    e.limit.setValue(4)
    click(qtbot, e.zs_button)
    with qtbot.waitSignal(e.worker.finished, timeout=LONG):
        pass
    assert error_dialogs == []
    assert e.zs_table.rowCount() == 1
    assert e.zs_table.item(0, 0).text() == "dense" and e.zs_table.item(0, 4).text() == "4"


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
    worker = window.run_panel.worker
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    assert window.state.run_status == "done"


@pytest.mark.parametrize("structure", ["2:4", "custom"])
def test_nm_structure_controls(window, structure):
    p = window.prune_panel
    p.structure.setCurrentIndex(p.structure.findData(structure))
    if structure == "custom":
        p.n.setValue(3)
        p.m.setValue(8)
        assert p.nm_row.isVisibleTo(p)
    cfg = window.state.prune_config
    assert cfg is not None and cfg.structure == ("2:4" if structure == "2:4" else "3:8")
    assert not p.sparsity.isEnabled()
    p.n.setValue(8)  # N >= M is impossible
    if structure == "custom":
        assert window.state.prune_config is None and "0 < N < M" in window.state.prune_error
        assert window.steps.kinds()["pruning"] == "warn"
