"""Estimates before long work and ETAs while it runs (gui/estimates.py, in the calibration, run and
evaluation steps). The machine's rate is replaced by a slow one, so that the tiny model's jobs
come out in minutes and each setting's effect shows in the words; no test depends on a time."""

from __future__ import annotations

import math
import re

import pytest
from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import LONG, click, generate_calibration, load_folder, screenshot, set_eval
from prunestudio.core.calib import selfgen
from prunestudio.core.model.speed import MachineSpeed
from prunestudio.gui import estimates


@pytest.fixture
def slow_machine(monkeypatch):
    """A machine of 20 kFLOP/s: the tiny model's jobs take minutes on it."""
    monkeypatch.setattr(estimates, "machine_speed", lambda *a, **k: MachineSpeed(2e4, "slow", probed=False))


def minutes(text: str) -> float:
    """The number of minutes in "about 12 min on this machine" (hours as 60 minutes; 0 for under a minute)."""
    m = re.search(r"about ([\d.]+) (min|h) on this machine", text)
    if m is None:
        assert "under a minute on this machine" in text, text
        return 0.0
    return float(m.group(1)) * (60 if m.group(2) == "h" else 1)


def test_estimates_show_before_the_jobs_and_follow_the_settings(window, qtbot, monkeypatch, tiny_model_dir,
                                                                 eval_file, slow_machine, screenshots):
    calib, run, ev = window.calib_panel, window.run_panel, window.eval_panel
    calib.form.kind.setCurrentIndex(calib.form.kind.findData("selfgen"))
    assert calib.estimate.text() == ""  # no model: nothing to estimate from
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)

    # step 2: Generate
    calib.form.nsamples.setValue(16)
    calib.form.seqlen.setValue(32)
    few = calib.estimate.text()
    assert few.startswith("Generating ") and "on this machine" in few
    calib.form.nsamples.setValue(64)
    assert minutes(calib.estimate.text()) > minutes(few) > 0
    calib.form.seqlen.setValue(128)
    assert minutes(calib.estimate.text()) > minutes(few)
    window.show_step(1)
    screenshot(window, screenshots / "estimate-generate.png")
    # the paper's protocol (prefixes from a text file): samples of varying length, about 5 per
    # window, more work than one sample per window
    windows_protocol = minutes(calib.estimate.text())
    calib.form.kind.setCurrentIndex(calib.form.kind.findData("selfgen-file"))
    calib.form.path.setText(str(eval_file))
    calib.form.protocol.setCurrentIndex(calib.form.protocol.findData("paper"))
    paper = calib.estimate.text()
    from prunestudio.core.run.estimate import PAPER_SAMPLES_PER_WINDOW

    assert paper.startswith(f"Generating about {math.ceil(64 * PAPER_SAMPLES_PER_WINDOW)} samples of varying "
                            "length for 64 windows: "), paper
    assert minutes(paper) > windows_protocol
    screenshot(window, screenshots / "estimate-generate-paper.png")
    calib.form.protocol.setCurrentIndex(calib.form.protocol.findData("windows"))
    assert minutes(calib.estimate.text()) == windows_protocol
    calib.form.kind.setCurrentIndex(calib.form.kind.findData("preset"))  # sampling text: quick, no estimate
    assert calib.estimate.text() == ""

    # step 5: one evaluation, and the zero-shot tasks
    set_eval(window, eval_file, seqlen=32, windows=4)
    four = ev.ppl_estimate.text()
    assert four.startswith("Each evaluation:") and "on this machine" in four
    ev.windows.setValue(40)
    assert minutes(ev.ppl_estimate.text()) > minutes(four)
    assert ev.zs_estimate.text() == ""
    ev.task_boxes["piqa"].setChecked(True)
    one_task = ev.zs_estimate.text()
    assert one_task.startswith("1 task:") and "on this machine" in one_task
    ev.task_boxes["hellaswag"].setChecked(True)
    assert minutes(ev.zs_estimate.text()) > minutes(one_task)
    window.show_step(4)
    screenshot(window, screenshots / "estimate-evaluate.png")
    ev.limit.setValue(10)
    assert minutes(ev.zs_estimate.text()) < minutes(one_task) or "under a minute" in ev.zs_estimate.text()

    # step 4: the run, with its evaluations
    ev.windows.setValue(4)
    calib.form.kind.setCurrentIndex(calib.form.kind.findData("selfgen"))
    calib.form.nsamples.setValue(64)
    run.eval_dense.setChecked(True)
    run.eval_pruned.setChecked(True)
    both = run.estimate.text()
    assert both.startswith("Run (pruning and both evaluations):"), both
    window.show_step(3)
    screenshot(window, screenshots / "estimate-run.png")
    run.eval_dense.setChecked(False)
    assert run.estimate.text().startswith("Run (pruning and one evaluation):")
    run.eval_pruned.setChecked(False)
    alone = run.estimate.text()
    assert alone.startswith("Run (pruning):") and minutes(alone) < minutes(both)
    calib.form.nsamples.setValue(256)
    assert minutes(run.estimate.text()) > minutes(alone)
    p = window.prune_panel
    p.method.setCurrentIndex(p.method.findData("magnitude"))  # no calibration: hardly any time
    assert minutes(run.estimate.text()) < minutes(alone)


def test_eta_while_generating_and_evaluating(window, qtbot, monkeypatch, tiny_model_dir, eval_file):
    monkeypatch.setattr(selfgen.generate, "_STEP_PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(selfgen.generate, "fitting_batch", lambda model, requested, *a: min(requested, 4))
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    calib = window.calib_panel
    seen: list[str] = []
    calib.form.kind.setCurrentIndex(calib.form.kind.findData("selfgen"))
    calib.form.nsamples.setValue(8)
    calib.form.seqlen.setValue(24)
    click(qtbot, calib.go)
    calib.job.worker.yielded.connect(lambda _ev: seen.append(calib.status.text.text()))
    with qtbot.waitSignal(calib.job.worker.finished, timeout=LONG):
        pass
    live = [t for t in seen if t.startswith("Generate:")]
    assert live and all("elapsed" in t for t in live), seen
    assert any(re.search(r"about [\d:.]+ (s|min) left", t) for t in live), live

    ev = window.eval_panel
    set_eval(window, eval_file, seqlen=32, windows=4)
    seen.clear()
    click(qtbot, ev.dense_button)
    ev.job.worker.yielded.connect(lambda _ev: seen.append(ev.status.text.text()))
    with qtbot.waitSignal(ev.job.worker.finished, timeout=LONG):
        pass
    assert any("elapsed" in t for t in seen), seen


def test_eta_of_the_run_evaluations(window, qtbot, monkeypatch, tiny_model_dir, eval_file):
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    generate_calibration(qtbot, window, nsamples=4, seqlen=32)
    set_eval(window, eval_file, seqlen=32, windows=4)
    run = window.run_panel
    run.eval_dense.setChecked(True)
    run.eval_pruned.setChecked(True)
    assert run.estimate.text().startswith("Run (pruning and both evaluations):")
    window.show_step(3)
    click(qtbot, run.start_button)
    seen: list[str] = []
    run.job.worker.yielded.connect(lambda _ev: seen.append(run.where.text()))
    with qtbot.waitSignal(run.job.worker.finished, timeout=LONG):
        pass
    progress = [t for t in seen if t.startswith("Evaluating the") and "/" in t]
    assert any(t.startswith("Evaluating the dense") for t in progress), seen
    assert any(t.startswith("Evaluating the pruned") for t in progress), seen
    assert all(re.search(r"\d+ / \d+ windows, elapsed \d", t) for t in progress), progress
