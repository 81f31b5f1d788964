"""gui.plotting: plots take their colours from the palette, light or dark."""

from __future__ import annotations

import pytest
from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)


@pytest.mark.parametrize("dark", [False, True])
def test_readable_in_light_and_dark_palettes(configured_app, qtbot, dark, tmp_path, screenshots):
    """Text colours come from the palette: with a dark palette the steps and plots follow it."""
    from prunestudio.gui.main_window import MainWindow
    from prunestudio.gui.state import AppState
    from PySide6.QtGui import QColor, QPalette

    old = configured_app.palette()
    pal = QPalette(old)
    if dark:
        for role, color in ((QPalette.ColorRole.Window, "#2b2b2b"), (QPalette.ColorRole.Base, "#1e1e1e"),
                            (QPalette.ColorRole.AlternateBase, "#262626"), (QPalette.ColorRole.Button, "#353535"),
                            (QPalette.ColorRole.Text, "#e8e8e8"), (QPalette.ColorRole.WindowText, "#e8e8e8"),
                            (QPalette.ColorRole.ButtonText, "#e8e8e8"), (QPalette.ColorRole.PlaceholderText, "#9a9a9a")):
            pal.setColor(role, QColor(color))
        for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
            pal.setColor(QPalette.ColorGroup.Disabled, role, QColor("#7a7a7a"))
    configured_app.setPalette(pal)
    try:
        w = MainWindow(AppState(tmp_path / "h.sqlite3"))
        qtbot.addWidget(w)
        w.resize(1280, 820)
        w.show()
        w.show_step(3)
        img = w.grab()
        img.save(str(screenshots / f"theme-{'dark' if dark else 'light'}-run.png"))
        bg = w.run_panel.heatmap.glw.backgroundBrush().color()
        assert bg == pal.color(QPalette.ColorRole.Base)
        ax = w.run_panel.heatmap.plot.getAxis("left")
        assert ax.textPen().color() == pal.color(QPalette.ColorRole.Text)
    finally:
        configured_app.setPalette(old)
