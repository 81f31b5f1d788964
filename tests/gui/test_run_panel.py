"""Step 4 (gui/panels/run.py): the OWL chart and heatmap of a run, the memory question before one."""

from __future__ import annotations

import numpy as np
from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import LONG, generate_calibration, load_folder, screenshot, start_run
from prunestudio.core.events import AllocationComputed
from prunestudio.gui.state import RunStatus


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
    assert window.state.run_status == RunStatus.DONE
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
    assert window.state.run_status == RunStatus.NONE and not window.state.busy
