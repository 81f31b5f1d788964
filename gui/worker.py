"""Run an engine generator on a QThread; deliver its events as Qt signals on the GUI thread.

The engine's long operations are generators: ``yield`` = progress event, ``return`` = result,
``should_stop()`` checked between steps. A :class:`Worker` runs one on its own ``QThread``::

    w = Worker(iter_prune, model, ids, cfg, device, name="pruning")   # should_stop is injected
    w.yielded.connect(view.on_event)      # one call per event, on the GUI thread
    w.returned.connect(panel.on_result)   # the generator's return value
    w.errored.connect(panel.on_error)     # ErrorInfo: the exception object and its traceback
    w.finished.connect(panel.on_done)     # always last (after returned, errored or cancelled)
    w.start();  ...;  w.cancel()          # cancel = a threading.Event the engine polls

How events travel: the worker thread drains the generator with the engine's one drain loop
(:func:`~prunestudio.core.events.run_to_completion`), appends each event to a locked deque and,
only when the deque was empty, emits a private signal queued to this object (which lives on the
GUI thread). The GUI thread empties the deque in one go, so a burst costs one wake-up;
consecutive ``PhaseProgress`` of one phase collapse to the newest; a drain stops after
``budget_ms`` and reschedules itself so the event loop keeps breathing; wake-ups come at most
every ``min_interval_ms``. Every public
signal is emitted on the GUI thread: slots may touch widgets. The worker thread never does.

Errors: any exception leaves the generator as an :class:`ErrorInfo` (exception object plus its
formatted traceback; frame locals are cleared so a failed run frees its tensors). ``Cancelled``
becomes the ``cancelled`` signal instead. Unless ``report_errors=False`` the error also goes to
the application's error sink (:mod:`errors`), so no failure is silent.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from PySide6.QtCore import QObject, Qt, QThread, QTimer, Signal, Slot

from ..core.errors import Cancelled
from ..core.events import PhaseProgress, run_to_completion

log = logging.getLogger("prunestudio.gui.worker")

_ACTIVE: set["Worker"] = set()
WORKER_NICE = int(os.environ.get("PRUNESTUDIO_WORKER_NICE", "5"))


@dataclass
class ErrorInfo:
    exception: BaseException
    traceback: str
    task: str = ""

    @property
    def cancelled(self) -> bool:
        return isinstance(self.exception, Cancelled)


class _Thread(QThread):
    """A plain QThread that calls one function (the work lives in the engine, not here)."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        super().__init__()
        self._target = target
        self.setObjectName(name)

    def run(self) -> None:  # noqa: D102
        self._target()


def _lower_thread_priority(nice: int) -> None:
    """Make the calling (worker) thread yield the CPU to the GUI thread under contention.

    On Linux ``nice`` is per thread and threads the worker starts (torch's OpenMP pool) inherit
    it; ``QThread.setPriority`` has no effect for normal scheduling there. Elsewhere: no-op.
    """
    if nice <= 0 or not hasattr(os, "setpriority") or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        pass


def _accepts_should_stop(fn: Callable[..., Any]) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return "should_stop" in sig.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()
    )


def _clear_frames(exc: BaseException) -> None:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if e.__traceback__ is not None:
            traceback.clear_frames(e.__traceback__)
        e = e.__cause__ or e.__context__


def _squash(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Drop a PhaseProgress when the next item is a newer PhaseProgress of the same phase."""
    out: list[tuple[str, Any]] = []
    for kind, payload in items:
        if (kind == "event" and isinstance(payload, PhaseProgress) and out and out[-1][0] == "event"
                and isinstance(out[-1][1], PhaseProgress) and out[-1][1].phase == payload.phase):
            out[-1] = (kind, payload)
        else:
            out.append((kind, payload))
    return out


class Worker(QObject):
    started = Signal()
    yielded = Signal(object)
    returned = Signal(object)
    errored = Signal(object)  # ErrorInfo
    cancelled = Signal()
    finished = Signal()
    _wake = Signal()

    def __init__(self, fn: Callable[..., Any], *args: Any, name: str | None = None,
                 report_errors: bool = True, min_interval_ms: int = 15, budget_ms: int = 25,
                 nice: int = WORKER_NICE, **kwargs: Any) -> None:
        super().__init__()
        self.name = name or getattr(fn, "__name__", "task")
        self._cancel_event = threading.Event()
        self.should_stop: Callable[[], bool] = self._cancel_event.is_set
        if "should_stop" not in kwargs and _accepts_should_stop(fn):
            kwargs["should_stop"] = self.should_stop
        self._call: Callable[[], Any] | None = lambda: fn(*args, **kwargs)
        self.report_errors = report_errors
        self.nice = nice
        self._lock = threading.Lock()
        self._queue: deque[tuple[str, Any]] = deque()
        self._scheduled = False
        self._pending: list[tuple[str, Any]] = []
        self._min_interval = min_interval_ms / 1000.0
        self._budget = budget_ms / 1000.0
        self._last_drain = 0.0
        self._thread: _Thread | None = None
        self._done = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._drain)
        self._wake.connect(self._on_wake, Qt.ConnectionType.QueuedConnection)

    # ---- control (GUI thread) -----------------------------------------------------------------
    def start(self) -> "Worker":
        if self._thread is not None:
            raise RuntimeError("a worker runs once")
        self._thread = _Thread(self._body, f"prunestudio-{self.name}")
        _ACTIVE.add(self)
        self._thread.start()
        self.started.emit()
        return self

    def cancel(self) -> None:
        """Ask the engine to stop at its next check (between modules, batches or windows)."""
        self._cancel_event.set()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and not self._done

    def wait(self, timeout_ms: int = -1) -> bool:
        """Block until the thread ended (signals are delivered later by the event loop)."""
        if self._thread is None:
            return True
        return self._thread.wait(timeout_ms) if timeout_ms >= 0 else self._thread.wait()

    # ---- the worker thread --------------------------------------------------------------------
    def _body(self) -> None:
        _lower_thread_priority(self.nice)
        call, self._call = self._call, None
        try:
            assert call is not None
            result = call()
            if inspect.isgenerator(result):
                result = run_to_completion(result, lambda ev: self._post(("event", ev)))
            self._post(("returned", result))
        except BaseException as e:  # noqa: BLE001 - everything is delivered, nothing escapes
            tb = traceback.format_exc()
            _clear_frames(e)
            self._post(("errored", ErrorInfo(e, tb, self.name)))
        finally:
            call = None
            result = None

    def _post(self, item: tuple[str, Any]) -> None:
        with self._lock:
            self._queue.append(item)
            wake = not self._scheduled
            self._scheduled = True
        if wake:
            self._wake.emit()

    # ---- the GUI thread -----------------------------------------------------------------------
    @Slot()
    def _on_wake(self) -> None:
        wait = self._last_drain + self._min_interval - time.perf_counter()
        if wait > 0 and not self._timer.isActive():
            self._timer.start(max(1, int(wait * 1000)))
        elif not self._timer.isActive():
            self._drain()

    @Slot()
    def _drain(self) -> None:
        with self._lock:
            self._pending.extend(self._queue)
            self._queue.clear()
            self._scheduled = False
        self._last_drain = time.perf_counter()
        items = _squash(self._pending)
        self._pending = []
        t0 = time.perf_counter()
        for n, (kind, payload) in enumerate(items):
            if kind == "event":
                try:
                    self.yielded.emit(payload)
                except Exception as e:  # noqa: BLE001 - a faulty slot must not kill the drain
                    self._report(ErrorInfo(e, traceback.format_exc(), f"{self.name} (display)"))
                if time.perf_counter() - t0 > self._budget and n + 1 < len(items):
                    self._pending = items[n + 1:]
                    self._timer.start(0)
                    return
            else:
                self._finish(kind, payload)

    def _finish(self, kind: str, payload: Any) -> None:
        if self._done:
            return
        self._done = True
        if self._thread is not None:
            self._thread.wait()  # returns at once: the body posted its last item and ends
        _ACTIVE.discard(self)
        if kind == "returned":
            self.returned.emit(payload)
        elif isinstance(payload, ErrorInfo) and payload.cancelled:
            log.info("%s cancelled", self.name)
            self.cancelled.emit()
        else:
            self.errored.emit(payload)
            self._report(payload)
        self.finished.emit()

    def _report(self, info: ErrorInfo) -> None:
        if not self.report_errors:
            return
        from . import errors

        errors.report(info.exception, info.traceback, info.task)


def active_workers() -> list[Worker]:
    return list(_ACTIVE)


def cancel_workers() -> list[Worker]:
    """Ask every running worker to stop at its next check; the workers asked. Never blocks."""
    workers = list(_ACTIVE)
    for w in workers:
        w.cancel()
    return workers


def after_workers(callback: Callable[[], None], timeout_ms: int) -> None:
    """Cancel every running worker and call ``callback`` once, on the GUI thread, when all of them
    have ended or after ``timeout_ms`` (one may be inside a step that cannot be interrupted, such as
    reading weights or writing a file), whichever comes first; at once when none runs. Never
    blocks: the event loop keeps running, so each worker's ``finished`` arrives as usual.

    Used when the application closes: no error dialog pops up then (the window is gone); a worker's
    error is logged instead.
    """
    workers = cancel_workers()
    if not workers:
        callback()
        return
    called = False

    def fire() -> None:
        nonlocal called
        if not called:
            called = True
            callback()

    def one_ended() -> None:
        if all(not w.is_running for w in workers):
            fire()

    for w in workers:
        w.report_errors = False
        w.errored.connect(lambda info, w=w: log.error("%s failed while closing: %s\n%s", w.name,
                                                      info.exception, info.traceback))
        w.finished.connect(one_ended)
    QTimer.singleShot(max(0, timeout_ms), fire)


def wait_for_workers(timeout_ms: int = 10000) -> bool:
    """Cancel every running worker and block until its thread ended or ``timeout_ms`` passed;
    whether all ended. Blocks the calling thread: the GUI uses :func:`after_workers` instead."""
    workers = cancel_workers()
    deadline = time.perf_counter() + timeout_ms / 1000.0
    ok = True
    for w in workers:
        left = max(0, int((deadline - time.perf_counter()) * 1000))
        ok = w.wait(left) and ok
    return ok
