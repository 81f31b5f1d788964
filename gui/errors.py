"""The one place every error ends up: log it, then tell the user in a short dialog.

Sources routed here: a worker's ``errored`` signal (see :mod:`worker`), ``sys.excepthook``
(exceptions escaping Qt slots on the GUI thread) and ``threading.excepthook`` (any other thread).
:func:`report` may be called from any thread; the dialog is always shown on the GUI thread, one at
a time (errors arriving while one is open are logged and counted, not stacked).

The dialog: a one-sentence message (``PruneStudioError.message``, or the exception type and its
first line), the hint as informative text, and "Show Details..." with ``details`` and the
traceback. Tests replace :func:`show_dialog` with ``monkeypatch`` (it is looked up at call time).
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable

import shiboken6
from PySide6.QtCore import QCoreApplication, QObject, Qt, Signal, Slot
from PySide6.QtWidgets import QMessageBox, QWidget

from ..core.errors import Cancelled, PruneStudioError

log = logging.getLogger("prunestudio.gui")


@dataclass(frozen=True)
class ErrorReport:
    """What the user sees: ``text`` (one sentence), ``hint`` and ``details`` (on demand)."""

    title: str
    text: str
    hint: str
    details: str
    exception: BaseException | None = None
    context: str = ""


def format_traceback(exc: BaseException, tb: TracebackType | str | None = None) -> str:
    if isinstance(tb, str):
        return tb
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def describe(exc: BaseException, tb: TracebackType | str | None = None, context: str = "") -> ErrorReport:
    """Turn an exception into the texts of the dialog."""
    trace = format_traceback(exc, tb)
    where = f" while {context}" if context else ""
    if isinstance(exc, PruneStudioError):
        details = "\n\n".join(x for x in (exc.details.strip(), trace.strip()) if x)
        return ErrorReport("Prune Studio", exc.message, exc.hint, details, exc, context)
    first = (str(exc).strip().splitlines() or [""])[0]
    msg = f"Something went wrong{where}: {type(exc).__name__}" + (f": {first}" if first else ".")
    if isinstance(exc, MemoryError):
        hint = "The machine ran out of memory. Use fewer or shorter calibration samples, or a smaller model."
    else:
        hint = "The app is still usable. The details below help with a bug report."
    return ErrorReport("Prune Studio - unexpected error", msg, hint, trace, exc, context)


def show_dialog(parent: QWidget | None, report: ErrorReport) -> None:
    """Show the modal error box (replaced in tests)."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Critical)
    box.setWindowTitle(report.title)
    box.setText(report.text)
    if report.hint:
        box.setInformativeText(report.hint)
    if report.details:
        box.setDetailedText(report.details)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    box.exec()


class ErrorSink(QObject):
    """Collects errors from any thread and presents them on the GUI thread."""

    reported = Signal(object)  # ErrorReport, after it was logged (GUI thread)
    _posted = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self.parent_widget: QWidget | None = None
        self._showing = False
        self._missed = 0
        self._posted.connect(self._present, Qt.ConnectionType.QueuedConnection)

    def report(self, exc: BaseException, tb: TracebackType | str | None = None, context: str = "") -> None:
        """Log ``exc`` and schedule the dialog. Safe to call from any thread."""
        rep = describe(exc, tb, context)
        if isinstance(exc, Cancelled):
            log.info("cancelled%s", f" ({context})" if context else "")
            return
        log.error("%s\n%s", rep.text, rep.details)
        self._posted.emit(rep)

    @Slot(object)
    def _present(self, rep: ErrorReport) -> None:
        self.reported.emit(rep)
        if self._showing:
            self._missed += 1
            return
        self._showing = True
        try:
            parent = self.parent_widget
            if parent is not None and not shiboken6.isValid(parent):
                parent = self.parent_widget = None
            # looked up at call time so that tests can monkeypatch errors.show_dialog
            sys.modules[__name__].show_dialog(parent, rep)
        except Exception:  # noqa: BLE001 - the error sink itself must never raise
            log.exception("could not show the error dialog")
        finally:
            self._showing = False
        if self._missed:
            log.warning("%d more error(s) happened while the dialog was open; see the log", self._missed)
            self._missed = 0


_SINK: ErrorSink | None = None
_SINK_LOCK = threading.Lock()


def sink() -> ErrorSink:
    """The application's sink (created on first use; needs a QCoreApplication)."""
    global _SINK
    with _SINK_LOCK:
        if _SINK is None:
            app = QCoreApplication.instance()
            _SINK = ErrorSink()
            if app is not None and _SINK.thread() is not app.thread():
                _SINK.moveToThread(app.thread())
        return _SINK


def report(exc: BaseException, tb: TracebackType | str | None = None, context: str = "") -> None:
    """Report an error from anywhere (logs only when there is no Qt application)."""
    if QCoreApplication.instance() is None:
        log.error("%s", format_traceback(exc, tb))
        if sys.stderr is not None:
            print(format_traceback(exc, tb), file=sys.stderr)
        return
    sink().report(exc, tb, context)


def install_hooks() -> Callable[[], None]:
    """Route ``sys.excepthook`` and ``threading.excepthook`` to :func:`report`; returns an undo."""
    old_sys, old_thread = sys.excepthook, threading.excepthook

    def sys_hook(etype: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if issubclass(etype, KeyboardInterrupt):
            old_sys(etype, value, tb)
            return
        report(value, tb)

    def thread_hook(args: Any) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        name = getattr(args.thread, "name", "a background thread")
        report(args.exc_value, args.exc_traceback, f"running {name}")

    sys.excepthook = sys_hook
    threading.excepthook = thread_hook

    def undo() -> None:
        sys.excepthook, threading.excepthook = old_sys, old_thread

    return undo
