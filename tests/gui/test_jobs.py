"""PanelJob: one job at a time through the state, its story in the panel's status line, errors
still reaching the one error dialog."""

from __future__ import annotations

import threading

from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from prunestudio.core.errors import Cancelled
from prunestudio.core.events import Message
from prunestudio.gui.jobs import BUSY_TEXT, PanelJob
from prunestudio.gui.state import AppState
from prunestudio.gui.widgets import StatusLine

T = 20_000


def _job(tmp_path):
    state = AppState(tmp_path / "h.sqlite3")
    status = StatusLine()
    return state, status, PanelJob(state, status)


def _count(n, should_stop):
    for i in range(n):
        yield Message(f"m{i}")
    return n


def test_a_job_runs_reports_and_frees_the_state(configured_app, qtbot, tmp_path):
    state, status, job = _job(tmp_path)
    events, done, order = [], [], []
    state.busy_changed.connect(lambda b: order.append(("busy", b, job.running)))
    w = job.start(_count, 3, name="counting", busy_text="Counting…", on_event=events.append,
                  on_done=done.append, on_finished=lambda: order.append(("finished", job.running)))
    assert w is not None and job.worker is w and state.current is w
    assert (status.kind, status.text.text()) == ("busy", "Counting…")
    assert order == [("busy", True, True)]  # the panel's own job is known when the state says busy
    with qtbot.waitSignal(w.finished, timeout=T):
        pass
    assert [e.text for e in events] == ["m0", "m1", "m2"] and done == [3]
    # on_finished comes with the slot already free, and before the state says it is idle
    assert order[1:] == [("finished", False), ("busy", False, False)]
    assert not state.busy and not job.running


def test_refused_while_another_job_runs(configured_app, qtbot, tmp_path):
    state, status, job = _job(tmp_path)
    other = PanelJob(state, StatusLine())
    gate = threading.Event()

    def wait(should_stop):
        gate.wait(10)
        return 1

    w = other.start(wait, name="waiting", busy_text="…")
    assert w is not None
    assert job.start(_count, 1, name="counting", busy_text="Counting…") is None
    assert (status.kind, status.text.text()) == ("warn", BUSY_TEXT)
    assert not job.running and state.current is w
    with qtbot.waitSignal(w.finished, timeout=T):
        gate.set()


def test_failure_goes_to_the_status_line_and_the_error_dialog(configured_app, qtbot, tmp_path, error_dialogs):
    state, status, job = _job(tmp_path)

    def bad(should_stop):
        yield Message("before")
        raise ValueError("no such thing")

    w = job.start(bad, name="failing", busy_text="…", failed_text="Not done: {error}")
    with qtbot.waitSignal(w.finished, timeout=T):
        pass
    assert (status.kind, status.text.text()) == ("error", "Not done: no such thing")
    qtbot.waitUntil(lambda: len(error_dialogs) == 1, timeout=5000)
    assert "no such thing" in error_dialogs[0].text and "failing" in error_dialogs[0].text
    assert not state.busy and not job.running


def test_cancel_says_so_and_shows_no_error(configured_app, qtbot, tmp_path, error_dialogs):
    state, status, job = _job(tmp_path)
    started = threading.Event()

    def loop(should_stop):
        started.set()
        while not should_stop():
            yield Message("tick")
        raise Cancelled()

    w = job.start(loop, name="looping", busy_text="…", cancelled_text="Stopped.")
    assert started.wait(10)
    with qtbot.waitSignal(w.finished, timeout=T):
        job.cancel()
    assert (status.kind, status.text.text()) == ("warn", "Stopped.")
    assert error_dialogs == [] and not state.busy


def test_own_error_and_cancel_slots_replace_the_texts(configured_app, qtbot, tmp_path, error_dialogs):
    state, status, job = _job(tmp_path)
    got = []

    def bad(should_stop):
        raise KeyError("k")

    w = job.start(bad, name="failing", busy_text="…", on_error=lambda info: got.append(info.exception))
    with qtbot.waitSignal(w.finished, timeout=T):
        pass
    assert len(got) == 1 and isinstance(got[0], KeyError)
    assert status.kind == "busy"  # the panel's own slot decides what the line says
    qtbot.waitUntil(lambda: len(error_dialogs) == 1, timeout=5000)  # and the dialog still comes
