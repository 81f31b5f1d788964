"""Closing the window while a job runs: the close returns at once, the window hides, the job is
cancelled, and the application is asked to quit only once the worker thread has ended - even when
the job is inside a step that cannot be interrupted (a model load, a save) when the window closes.

Each job is held inside such a step by a patch: the step tells the test it began, waits until the
window's close() has returned, then takes STEP_S more seconds (longer than the bound on close()).
"""

from __future__ import annotations

import threading
import time

import pytest
from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import LONG, click, load_folder, start_run
from prunestudio.core.events import ModulePruned
from prunestudio.gui import main_window as main_window_mod
from prunestudio.gui.state import RunStatus
from prunestudio.gui.worker import active_workers

STEP_S = 0.8  # what the held step still takes after the close
CLOSE_BOUND_S = 0.5  # the most close() may take on the GUI thread


class Gate:
    """A step that cannot be interrupted, held open until the window was closed."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.closed = threading.Event()

    def hold(self) -> None:  # runs in the worker thread
        if self.entered.is_set():
            return
        self.entered.set()
        assert self.closed.wait(30), "the test never closed the window"
        time.sleep(STEP_S)


def gated_generator(real, gate: Gate, when):
    """Wrap a generator function: after the first event ``when`` accepts, hold the gate."""

    def wrapped(*args, **kwargs):
        gen = real(*args, **kwargs)
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                return stop.value
            yield ev
            if when(ev):
                gate.hold()

    return wrapped


@pytest.fixture
def quits(monkeypatch):
    """Calls to quit the application (recorded: the tests share one QApplication)."""
    calls: list[float] = []
    monkeypatch.setattr(main_window_mod, "quit_application", lambda: calls.append(time.perf_counter()))
    return calls


def close_while_held(qtbot, window, worker, gate: Gate, quits: list[float]) -> None:
    """Close during the held step; check what the user and the process see."""
    qtbot.waitUntil(gate.entered.is_set, timeout=LONG)
    assert window.state.busy and worker.is_running
    t0 = time.perf_counter()
    window.close()
    took = time.perf_counter() - t0
    gate.closed.set()
    assert took < CLOSE_BOUND_S, f"close() blocked the GUI thread for {took:.2f} s"
    assert not window.isVisible()  # hidden at once
    assert worker.is_running and quits == []  # still in its step: no quit yet
    cancelled: list[bool] = []
    worker.cancelled.connect(lambda: cancelled.append(True))
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    qtbot.waitUntil(lambda: len(quits) == 1, timeout=5000)
    assert cancelled == [True], "the job was not cancelled"
    assert worker.wait(0) and active_workers() == []  # its thread has ended
    assert quits[0] - t0 >= STEP_S * 0.9  # quit came after the step, not before
    assert not window.isVisible() and not window.state.busy


def test_close_during_model_load(window, qtbot, monkeypatch, tiny_model_dir, quits, confirm_answers):
    from prunestudio.core.model import loading

    gate = Gate()
    real = loading._check_config  # reading the config, just before the weights: no check inside

    def slow_check(*a, **k):
        gate.hold()
        return real(*a, **k)

    monkeypatch.setattr(loading, "_check_config", slow_check)
    from prunestudio.gui import dialogs

    panel = window.model_panel
    monkeypatch.setattr(dialogs, "get_directory", lambda *a, **k: str(tiny_model_dir))
    click(qtbot, panel.folder.button)
    panel.device.setCurrentText("cpu")
    click(qtbot, panel.load_button)
    worker = panel.job.worker
    close_while_held(qtbot, window, worker, gate, quits)
    assert window.state.loaded is None
    _answers, asked = confirm_answers
    assert asked and "loading the model" in asked[0]  # "Quit while working?" was asked first


def test_close_during_generation(window, qtbot, monkeypatch, tiny_model_dir, quits):
    from prunestudio.core.events import PhaseStarted
    from prunestudio.gui import tasks

    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    gate = Gate()
    monkeypatch.setattr(tasks, "build_calibration",
                        gated_generator(tasks.build_calibration, gate,
                                        lambda ev: isinstance(ev, PhaseStarted) and ev.phase == "generate"))
    panel = window.calib_panel
    form = panel.form
    form.kind.setCurrentIndex(form.kind.findData("selfgen"))
    form.nsamples.setValue(8)
    form.seqlen.setValue(32)
    click(qtbot, panel.go)
    close_while_held(qtbot, window, panel.job.worker, gate, quits)
    assert window.state.calib is None


def test_close_during_pruning(window, qtbot, monkeypatch, tiny_model_dir, quits):
    from prunestudio.core.run import run as run_mod

    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    p = window.prune_panel
    p.method.setCurrentIndex(p.method.findData("magnitude"))
    window.run_panel.eval_dense.setChecked(False)
    gate = Gate()
    monkeypatch.setattr(run_mod, "iter_prune",
                        gated_generator(run_mod.iter_prune, gate, lambda ev: isinstance(ev, ModulePruned)))
    worker = start_run(qtbot, window)
    close_while_held(qtbot, window, worker, gate, quits)
    assert window.state.run_status == RunStatus.CANCELLED


def test_close_during_export_leaves_nothing(window, qtbot, monkeypatch, tiny_model_dir, tmp_path, quits):
    from prunestudio.core.run import export as export_mod

    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    p = window.prune_panel
    p.method.setCurrentIndex(p.method.findData("magnitude"))
    window.run_panel.eval_dense.setChecked(False)
    worker = start_run(qtbot, window)
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    assert window.state.run_status == RunStatus.DONE

    gate = Gate()
    real = export_mod._carry_source_files  # after the weights were written into the temporary folder

    def slow_carry(model, tmp):
        real(model, tmp)
        assert (tmp / "model.safetensors").exists()  # half an export exists while the step runs
        gate.hold()

    monkeypatch.setattr(export_mod, "_carry_source_files", slow_carry)
    window.show_step(4)
    e = window.eval_panel
    qtbot.waitUntil(lambda: e.export_button.isEnabled(), timeout=5000)
    parent = tmp_path / "exports"
    e.out_dir.setText(str(parent / "exported"))
    click(qtbot, e.export_button)
    close_while_held(qtbot, window, e.job.worker, gate, quits)
    assert list(parent.iterdir()) == []  # neither the export nor its temporary folder
    assert window.state.export_path is None


def test_close_when_idle_quits_through_qt(window, qtbot, quits):
    """No job: the close is accepted at once and nothing waits (Qt quits on the last window)."""
    t0 = time.perf_counter()
    window.close()
    assert time.perf_counter() - t0 < CLOSE_BOUND_S
    assert not window.isVisible() and quits == []


def test_after_workers_is_bounded_and_logs_instead_of_dialogs(configured_app, qtbot, error_dialogs, caplog):
    """A worker stuck past the bound does not hold the callback back; an error raised while the
    application closes is logged, not shown in a dialog over a window that is gone."""
    from prunestudio.gui.worker import Worker, after_workers

    release = threading.Event()

    def stuck():
        assert release.wait(30)
        raise ValueError("disk went away")

    w = Worker(stuck, name="stuck save").start()
    called: list[float] = []
    t0 = time.perf_counter()
    after_workers(lambda: called.append(time.perf_counter()), 300)
    assert called == [] and time.perf_counter() - t0 < 0.1  # returned at once
    qtbot.waitUntil(lambda: called != [], timeout=5000)
    assert 0.25 < called[0] - t0 < 3 and w.is_running  # the bound, not the worker, ended the wait
    with caplog.at_level("ERROR", logger="prunestudio.gui.worker"):
        with qtbot.waitSignal(w.finished, timeout=LONG):
            release.set()
    qtbot.wait(100)  # a dialog would be queued: let it arrive
    assert len(called) == 1 and error_dialogs == []
    assert any("stuck save failed while closing: disk went away" in r.getMessage() for r in caplog.records)


def test_after_workers_without_workers_calls_back_at_once(configured_app):
    from prunestudio.gui.worker import after_workers

    called: list[bool] = []
    after_workers(lambda: called.append(True), 10_000)
    assert called == [True]


_STUCK = """
import sys, time
from PySide6.QtWidgets import QApplication
from prunestudio.gui.app import end_process
from prunestudio.gui.worker import Worker

app = QApplication([])
def stuck():  # a step that ignores cancel for longer than the process waits
    time.sleep(float(sys.argv[1]))
    return 1
Worker(stuck, name="stuck step").start()
time.sleep(0.1)
code = end_process(7, wait_ms=300)
print("end_process returned", code, flush=True)
sys.exit(code)
"""


@pytest.mark.parametrize("step_s, returns", [(0.05, True), (20.0, False)])
def test_process_never_aborts_on_a_running_worker(tmp_path, step_s, returns):
    """After the event loop, a worker that ends within the wait lets main return normally; one that
    does not is left running while the process exits at once with its code - never Qt's abort on a
    running QThread (rc 134, "QThread: Destroyed while thread is still running")."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PRUNESTUDIO_LOG_DIR": str(tmp_path / "logs"),
           "PRUNESTUDIO_SETTINGS": str(tmp_path / "s.ini")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _STUCK, str(step_s)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 7, proc.stderr[-2000:]
    assert "Destroyed while thread" not in proc.stderr
    assert ("end_process returned 7" in proc.stdout) == returns
    assert time.perf_counter() - t0 < 15  # the stuck step (20 s) was not waited for
