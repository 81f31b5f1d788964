"""gui.errors: exceptions escaping Qt slots and other threads reach the one error dialog."""

from __future__ import annotations

import sys
import threading

from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from prunestudio.gui import errors


def test_excepthooks_route_to_the_sink(configured_app, qtbot, error_dialogs):
    undo = errors.install_hooks()
    try:
        try:
            raise ValueError("escaped a slot")
        except ValueError:
            sys.excepthook(*sys.exc_info())
        t = threading.Thread(target=lambda: 1 / 0, name="helper-thread")
        t.start()
        t.join()
        qtbot.waitUntil(lambda: len(error_dialogs) == 2, timeout=5000)
    finally:
        undo()
    texts = sorted(r.text for r in error_dialogs)
    assert any("escaped a slot" in t for t in texts)
    assert any("ZeroDivisionError" in t and "helper-thread" in t for t in texts)
    assert sys.excepthook is not None and threading.excepthook is not None
