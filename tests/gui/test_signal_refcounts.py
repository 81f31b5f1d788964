"""The Qt binding must not lose references when signals are emitted.

PySide6-Essentials 6.12.0's ``Signal.emit()`` returned ``True`` without a reference of its own, so
every emission took one reference from ``True``; on Python 3.11 (where ``True`` is not immortal)
a long session of progress events then aborted the process ("Fatal Python error: bool_dealloc").
The pin in pyproject.toml avoids that release; this test catches a binding that does it again."""

from __future__ import annotations

import sys

import pytest
from PySide6.QtCore import QObject, Signal

from prunestudio.gui.worker import Worker

N = 2000


class _Emitter(QObject):
    with_value = Signal(object)
    without = Signal()


def _refcounts() -> tuple[int, int, int]:
    return sys.getrefcount(True), sys.getrefcount(False), sys.getrefcount(None)


@pytest.mark.parametrize("payload", [None, 1, "text", ("a", 2)])
def test_emitting_keeps_the_refcounts_of_the_singletons(qapp, payload):
    e = _Emitter()
    got: list = []
    e.with_value.connect(got.append)
    e.without.connect(lambda: got.append(0))
    before = _refcounts()
    for _ in range(N):
        e.with_value.emit(payload)
        e.without.emit()
    got.clear()
    after = _refcounts()
    # a leak or an over-release is proportional to N; a few references come and go otherwise
    assert all(abs(a - b) < N // 10 for a, b in zip(after, before)), (before, after)


def test_the_workers_signals_keep_the_refcounts(qapp):
    # the app's own signal class, which carries every event from the engine to the window
    w = Worker(lambda: None, name="refcounts")
    seen: list = []
    w.yielded.connect(seen.append)
    before = _refcounts()
    for i in range(N):
        w.yielded.emit(i % 2 == 0)
        w.returned.emit(None)
    seen.clear()
    after = _refcounts()
    assert all(abs(a - b) < N // 10 for a, b in zip(after, before)), (before, after)
