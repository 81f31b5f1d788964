"""Starting a job from a panel: the worker, its turn in the state, and the panel's status line.

Every panel that starts a long job does the same things: refuse while another job runs, run the
engine's generator on a :class:`~.worker.Worker` through :meth:`AppState.start` (one job touching
the model at a time), say "busy" in its status line, and say there how the job ended. A
:class:`PanelJob` does that once; the panel passes only what is its own::

    self.job = PanelJob(state, self.status)
    self.job.start(tasks.export, run, out, False, name="export", busy_text="Exporting…",
                   on_event=self._event, on_done=self._exported, on_finished=self._refresh)
    self.job.running, self.job.worker, self.job.cancel()

A failure also reaches the error dialog: the worker reports every error to :mod:`errors` itself,
and nothing here switches that off.
"""

from __future__ import annotations

from typing import Any, Callable

from .state import AppState
from .widgets import StatusLine
from .worker import ErrorInfo, Worker

BUSY_TEXT = "Another job is running; wait for it or cancel it (Esc)."


class PanelJob:
    """One panel's slot for a job: at most one runs from it; ``worker`` while it runs, else None."""

    def __init__(self, state: AppState, status: StatusLine) -> None:
        self.state = state
        self.status = status
        self.worker: Worker | None = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, fn: Callable[..., Any], *args: Any, name: str, busy_text: str,
              on_event: Callable[[Any], None] | None = None,
              on_done: Callable[[Any], None] | None = None,
              on_finished: Callable[[], None] | None = None,
              on_error: Callable[[ErrorInfo], None] | None = None,
              on_cancel: Callable[[], None] | None = None,
              failed_text: str = "Failed: {error}", cancelled_text: str = "Cancelled.") -> Worker | None:
        """Run ``fn(*args)`` on a worker named ``name``; None (and a warning in the
        status line) when another job runs.

        ``on_event`` gets every event and ``on_done`` the return value, on the GUI thread. An
        error puts ``failed_text`` (``{error}``: the exception) in the status line, a cancel
        ``cancelled_text``; ``on_error`` (an :class:`ErrorInfo`) and ``on_cancel`` replace those.
        ``on_finished`` comes last, whatever the outcome, once :attr:`worker` is None again and
        before the state announces that it is idle.
        """
        if self.state.busy:
            self.status.set("warn", BUSY_TEXT)
            return None
        w = Worker(fn, *args, name=name)
        if on_event is not None:
            w.yielded.connect(on_event)
        if on_done is not None:
            w.returned.connect(on_done)
        w.errored.connect(on_error or (lambda info: self.status.set("error", failed_text.format(error=info.exception))))
        w.cancelled.connect(on_cancel or (lambda: self.status.set("warn", cancelled_text)))
        w.finished.connect(lambda: self._finished(w, on_finished))
        self.worker = w  # before the state says "busy": the panel's busy slots see their own job
        self.status.set("busy", busy_text)
        if not self.state.start(w):
            self.worker = None
            return None
        return w

    def cancel(self) -> None:
        """Ask the running job (if any) to stop at its next check."""
        if self.worker is not None:
            self.worker.cancel()

    def _finished(self, w: Worker, on_finished: Callable[[], None] | None) -> None:
        if self.worker is w:
            self.worker = None
        if on_finished is not None:
            on_finished()
