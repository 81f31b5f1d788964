"""The generic worker: ordering, GUI-thread delivery, coalescing, errors, cancel."""

from __future__ import annotations

import threading

import pytest
from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from prunestudio.core.errors import Cancelled
from prunestudio.core.events import Message, PhaseProgress
from prunestudio.gui.worker import ErrorInfo, Worker, active_workers, wait_for_workers
from PySide6.QtCore import QCoreApplication, QThread

T = 20_000


def _gen(n, should_stop):
    for i in range(n):
        yield Message(f"m{i}")
    return n * 2


def test_events_then_returned_then_finished_on_gui_thread(qapp, qtbot):
    w = Worker(_gen, 5, name="test")
    got, threads, order = [], [], []
    w.yielded.connect(lambda ev: (got.append(ev.text), threads.append(QThread.currentThread())))
    w.returned.connect(lambda v: order.append(("returned", v)))
    w.finished.connect(lambda: order.append(("finished", None)))
    with qtbot.waitSignals([w.returned, w.finished], timeout=T, order="strict"):
        w.start()
    assert got == [f"m{i}" for i in range(5)]
    assert order == [("returned", 10), ("finished", None)]
    assert all(t is QCoreApplication.instance().thread() for t in threads)
    assert w not in active_workers() and not w.is_running


def test_plain_function_and_should_stop_injection(qapp, qtbot):
    seen = {}

    def fn(x, should_stop):
        seen["stop"] = should_stop
        return x + 1

    w = Worker(fn, 1)
    with qtbot.waitSignal(w.returned, timeout=T) as b:
        w.start()
    assert b.args == [2]
    assert seen["stop"] == w.should_stop


def test_progress_bursts_are_coalesced(qapp, qtbot):
    release = threading.Event()

    def burst(should_stop):
        release.wait(10)
        for i in range(2000):
            yield PhaseProgress("x", i, 2000)
        yield Message("end")
        return "ok"

    w = Worker(burst)
    got = []
    w.yielded.connect(got.append)
    with qtbot.waitSignal(w.finished, timeout=T):
        w.start()
        release.set()
    prog = [e for e in got if isinstance(e, PhaseProgress)]
    assert prog[-1].done == 1999 and len(prog) < 2000
    assert isinstance(got[-1], Message)  # order kept


def test_exception_keeps_object_and_traceback(qapp, qtbot):
    def bad(should_stop):
        yield Message("before")
        raise KeyError("missing thing")

    w = Worker(bad, report_errors=False)
    errs, cancelled = [], []
    w.errored.connect(errs.append)
    w.cancelled.connect(lambda: cancelled.append(1))
    with qtbot.waitSignal(w.finished, timeout=T):
        w.start()
    assert len(errs) == 1 and isinstance(errs[0], ErrorInfo)
    assert isinstance(errs[0].exception, KeyError)
    assert "missing thing" in errs[0].traceback and "in bad" in errs[0].traceback
    assert cancelled == []


def test_errors_go_to_the_sink_by_default(qapp, qtbot, error_dialogs):
    w = Worker(lambda should_stop: 1 / 0, name="dividing")
    with qtbot.waitSignal(w.finished, timeout=T):
        w.start()
    qtbot.waitUntil(lambda: len(error_dialogs) == 1, timeout=5000)
    assert "ZeroDivisionError" in error_dialogs[0].text and "dividing" in error_dialogs[0].text


def test_cancel_emits_cancelled_not_errored(qapp, qtbot, error_dialogs):
    started = threading.Event()

    def loop(should_stop):
        started.set()
        while True:
            yield Message("tick")
            if should_stop():
                raise Cancelled()

    w = Worker(loop)
    errs = []
    w.errored.connect(errs.append)
    with qtbot.waitSignals([w.cancelled, w.finished], timeout=T, order="strict"):
        w.start()
        assert started.wait(10)
        w.cancel()
    assert errs == [] and error_dialogs == []


def test_wait_for_workers_cancels_running_ones(qapp, qtbot):
    def loop(should_stop):
        while not should_stop():
            yield Message("tick")
        raise Cancelled()

    w = Worker(loop)
    w.start()
    assert wait_for_workers(10_000)
    with qtbot.waitSignal(w.finished, timeout=T):
        pass
    with pytest.raises(RuntimeError):
        w.start()
