"""Tab moves through every step's controls in the order the panel reads (top to bottom, label
then field, left column then right), whatever order the widgets were created in."""

from __future__ import annotations

import itertools

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


# Each step's Tab stops in reading order, written out here (attribute paths on the panel; an
# exclusive group of radio buttons is one stop, its checked button; "Collapsible" is the panel's
# own collapsible's toggle). With the advanced settings open and the window's defaults: widgets
# that are hidden or disabled there (DSnoT and SparseGPT settings under Wanda, OWL's under OWL
# off, the run's buttons before a run) are no stops.
EXPECTED = {
    0: ["radio['demo']", "catalog_choice", "folder.edit", "folder.button", "gguf.edit", "gguf.button", "hub",
        "device", "dtype", "trust", "load_button"],
    1: ["form.kind", "form.nsamples", "form.seqlen", "form.seed", "form.advanced.toggle", "form.temperature",
        "form.top_p", "form.top_k", "form.rep", "form.drop", "go", "open_button", "preview.table", "preview.text"],
    2: ["method", "sparsity", "structure", "owl", "skip", "Collapsible", "batch", "offload", "one_pass", "threads",
        "save_button", "load_button"],
    3: ["heatmap.layer_choice", "heatmap.glw", "tabs.tabBar", "mask.glw", "log"],
    4: ["source.edit", "source.button", "presets", "seqlen", "windows", "ppl_table", "out_dir.edit",
        "out_dir.button", "overwrite"]
       + [f"task_boxes[{t!r}]" for t in ("arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "boolq",
                                          "openbookqa")]
       + ["task_dir.edit", "task_dir.button", "limit", "full_tasks", "zs_table",
          # the try-it pane (no model: Generate disabled; greedy: top-p and seed disabled)
          "try_it.pane.prompt", "try_it.pane.new_tokens", "try_it.pane.temperature",
          "try_it.pane.texts['dense']", "try_it.pane.texts['pruned']"],
    5: ["grid_bar.grid.edit", "grid_bar.grid.button", "grid_bar.where", "grid_bar.run_button", "model_filter",
        "metric", "log_y", "refresh_button", "delete_button", "table", "plot_widget"],
}


def _widget(panel, path: str):
    from prunestudio.gui.widgets import Collapsible

    if path == "Collapsible":
        (only,) = panel.findChildren(Collapsible)
        return only.toggle
    obj = panel
    for part in path.split("."):
        name, _, key = part.partition("[")
        obj = getattr(obj, name)
        if name == "tabBar":
            obj = obj()
        if key:
            obj = obj[eval(key.rstrip("]"))]  # noqa: S307 - a literal key written above
    return obj


def _name(w) -> str:
    text = w.text() if callable(getattr(w, "text", None)) else ""
    return f"{type(w).__name__}:{w.objectName() or text}"


@pytest.mark.parametrize("step", range(6))
def test_tab_follows_the_reading_order(window, qtbot, step):
    from prunestudio.gui.widgets import Collapsible

    window.show_step(step)
    panel = list(window.panels.values())[step]
    for c in panel.findChildren(Collapsible):
        c.toggle.setChecked(True)  # show the advanced settings too
    qtbot.wait(10)
    expected = [_widget(panel, path) for path in EXPECTED[step]]
    walked = _tab_walk(qtbot, expected[0])
    # from the first control, Tab reaches every control of the panel in reading order, and no
    # other widget of the panel ever takes the focus
    run = list(itertools.takewhile(panel.isAncestorOf, walked))
    assert [_name(w) for w in run[:len(expected)]] == [_name(w) for w in expected]
    assert run[:len(expected)] == expected
    assert {id(w) for w in run} == {id(w) for w in expected}, [_name(w) for w in run]


def test_the_reading_order_function_agrees(window, qtbot):
    """layout_reading_order (which the panels' tab order is set from) lists the same stops."""
    from prunestudio.gui.widgets import Collapsible

    for step in range(6):
        window.show_step(step)
        panel = list(window.panels.values())[step]
        for c in panel.findChildren(Collapsible):
            c.toggle.setChecked(True)
        qtbot.wait(10)
        stops = [w for w in layout_reading_order(panel)
                 if w.isVisible() and w.isEnabled() and w.focusPolicy() & Qt.FocusPolicy.TabFocus
                 and not (isinstance(w, QRadioButton) and not w.isChecked())]
        assert stops == [_widget(panel, path) for path in EXPECTED[step]], step
