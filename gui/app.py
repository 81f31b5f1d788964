"""Starting Prune Studio: ``prunestudio-gui`` / ``python -m prunestudio.gui``.

``main()`` guards the standard streams (a windowed build has none), checks that Qt's platform plugin
can load (the engine's :func:`~prunestudio.core.model.system_checks.check_qt_platform`, in a separate
process, so that missing system libraries are named with their install command on stderr instead of
Qt's abort; ``PRUNESTUDIO_QT_CHECK=0`` skips it), creates the QApplication with
the organisation and application names, logs to a file in the user log folder, routes every
uncaught exception to the error sink (:mod:`errors`), shows the window, and on quit cancels the
running job without blocking the event loop; :func:`end_process` makes sure no worker thread
outlives ``main`` (see there).
"""

from __future__ import annotations

import logging
import os
import sys

from .logfile import setup_logging

log = logging.getLogger("prunestudio")


def guard_std_streams() -> None:
    """Give ``print``, tqdm and warnings somewhere to write when the app has no console."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 - lives as long as the app


def configure_application(app) -> None:  # noqa: ANN001 - QApplication
    """Names, icon and style sheet; QSettings are INI files (see :mod:`settings`)."""
    from PySide6.QtCore import QSettings

    from .resources import app_icon, style_sheet
    from .settings import APPLICATION, DISPLAY_NAME, ORGANIZATION

    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName(DISPLAY_NAME)
    app.setDesktopFileName("prunestudio")
    from ..core import __version__

    app.setApplicationVersion(__version__)
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    app.setWindowIcon(app_icon())
    qss = style_sheet()
    if qss:
        app.setStyleSheet(qss)


def qt_start_problem() -> str | None:
    """Why Qt's platform plugin cannot load, with the commands that fix it, or None when it loads
    (or the check is turned off with ``PRUNESTUDIO_QT_CHECK=0``). Run before any QApplication."""
    if os.environ.get("PRUNESTUDIO_QT_CHECK", "1") == "0":
        return None
    from ..core.model.system_checks import PROBLEM, check_qt_platform

    check = check_qt_platform()
    if check.level != PROBLEM:
        return None
    return "\n".join([f"Prune Studio cannot start. {check.sentence}", *(f"    {fix}" for fix in check.fixes)])


def main(argv: list[str] | None = None) -> int:
    guard_std_streams()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    log_file = setup_logging()

    from PySide6.QtWidgets import QApplication

    if QApplication.instance() is None:
        problem = qt_start_problem()
        if problem is not None:
            log.error("%s", problem)
            sys.stderr.write(problem + "\n")
            sys.stderr.flush()
            return 1

    from . import errors
    from .main_window import MainWindow
    from .settings import sync_all
    from .worker import cancel_workers

    app = QApplication.instance() or QApplication(list(argv if argv is not None else sys.argv))
    configure_application(app)
    undo_hooks = errors.install_hooks()
    app.aboutToQuit.connect(cancel_workers)  # never waits: the wait is in end_process, after exec
    app.aboutToQuit.connect(sync_all)
    log.info("Prune Studio starting; log file %s", log_file)
    args = list(argv if argv is not None else sys.argv)
    if "--self-test" in args:  # a tiny prune end to end, no window: proves a frozen bundle works
        from .selftest import run_self_test

        try:
            return run_self_test(app)
        finally:
            undo_hooks()
    window = MainWindow()
    window.show()
    if "--smoke-test" in args:  # start, show, quit: checks that an installed or frozen app runs
        from PySide6.QtCore import QTimer

        shot = args[args.index("--screenshot") + 1] if "--screenshot" in args[:-1] else None

        def finish() -> None:
            if shot:  # what the user would see, resources (icons, style sheet) included
                window.grab().save(shot)
            window.close()
            app.quit()

        QTimer.singleShot(200, finish)
    try:
        code = int(app.exec())
    finally:
        undo_hooks()
    return end_process(code)


FINAL_WAIT_MS = 5000


def end_process(code: int, wait_ms: int = FINAL_WAIT_MS) -> int:
    """After the event loop: return ``code`` once no worker runs, waiting at most ``wait_ms``.

    A closed window already waited (event loop running) for its job to end. A worker that still
    runs now (its step outlasted that wait, or the loop ended otherwise) must not reach the
    interpreter's shutdown: destroying a running QThread makes Qt abort the process ("QThread:
    Destroyed while thread is still running"), and a Python thread inside a finalising interpreter
    is not safe either. So the process ends here with ``os._exit(code)``, after settings and logs
    are flushed: nothing is destroyed, the thread just stops. An export cut off this way leaves only
    its ``.<name>.partial-*`` folder, never a folder that looks complete (exports are renamed into
    place when whole).
    """
    from .settings import sync_all
    from .worker import active_workers, wait_for_workers

    if wait_for_workers(wait_ms):
        log.info("Prune Studio closed")
        return code
    names = ", ".join(w.name for w in active_workers())
    log.warning("Prune Studio closed while %s was still running; the process ends without waiting for it", names)
    sync_all()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
