"""Tab moves through every step's controls in the order the panel reads (top to bottom, label
then field, left column then right), whatever order the widgets were created in."""

from __future__ import annotations

import pytest
from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from prunestudio.gui.widgets import layout_reading_order
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QRadioButton


def _tab_walk(qtbot, start, limit: int = 200) -> list:
    start.setFocus(Qt.FocusReason.TabFocusReason)
    qtbot.waitUntil(lambda: QApplication.focusWidget() is not None)
    seen = [QApplication.focusWidget()]
    for _ in range(limit):
        qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_Tab)
        w = QApplication.focusWidget()
        if w is seen[0]:
            break
        seen.append(w)
    return seen


@pytest.mark.parametrize("step", range(6))
def test_tab_follows_the_reading_order(window, qtbot, step):
    from prunestudio.gui.widgets import Collapsible

    window.show_step(step)
    panel = list(window.panels.values())[step]
    for c in panel.findChildren(Collapsible):
        c.toggle.setChecked(True)  # show the advanced settings too
    qtbot.wait(10)
    # an exclusive group of radio buttons is one Tab stop, its checked button (arrows move inside)
    expected = [w for w in layout_reading_order(panel)
                if w.isVisible() and w.isEnabled() and w.focusPolicy() & Qt.FocusPolicy.TabFocus
                and not (isinstance(w, QRadioButton) and not w.isChecked())]
    assert len(expected) >= 2, f"step {step} has fewer than two focusable controls"
    walked = _tab_walk(qtbot, expected[0])
    inside = [w for w in walked if panel.isAncestorOf(w)]
    # every control of the panel is reached by Tab, in reading order
    assert inside[: len(expected)] == expected, (
        [type(w).__name__ + ":" + (w.objectName() or getattr(w, "text", lambda: "")()) for w in inside[: len(expected)]],
        [type(w).__name__ + ":" + (w.objectName() or getattr(w, "text", lambda: "")()) for w in expected])
