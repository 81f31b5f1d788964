"""gui.resources: the icons and desktop file, found from a checkout."""

from __future__ import annotations

from pathlib import Path

from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)


def test_resources_from_checkout_and_icon(configured_app):
    from prunestudio.gui.resources import app_icon, resource_path, resources_dir

    root = Path(__file__).resolve().parents[2]
    assert resources_dir() == root / "resources"
    assert resource_path("icons", "prunestudio.svg") is not None
    assert resource_path("prunestudio.desktop") is not None
    assert not app_icon().isNull()
    png = resource_path("icons", "prunestudio-256.png")
    from PySide6.QtGui import QImage

    assert QImage(str(png)).width() == 256
