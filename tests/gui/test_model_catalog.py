"""The Model step's catalogue choice: the catalogue's models beside the demo, chosen by name,
remembered through recipes, fetched with progress and cancelled like the demo."""

from __future__ import annotations

import sys

from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import LONG, click


def test_catalogue_choice_lists_the_models_and_gives_their_name(window):
    panel = window.model_panel
    names = [panel.catalog_choice.itemData(i) for i in range(panel.catalog_choice.count())]
    assert names == ["gemma3-270m", "qwen2.5-coder-1.5b"]
    assert "about 1069 MB to download" in panel.catalog_choice.itemText(1)
    assert "Apache-2.0" in panel.catalog_choice.itemData(1, 3)  # Qt.ToolTipRole
    panel.catalog_choice.setCurrentIndex(1)
    panel.radio["catalog"].setChecked(True)
    assert panel.spec() == "qwen2.5-coder-1.5b"
    panel.set_spec("gemma3-270m")
    assert panel.radio["catalog"].isChecked() and panel.spec() == "gemma3-270m"
    panel.set_spec("demo")
    assert panel.radio["demo"].isChecked() and panel.spec() == "demo"


def test_cancel_while_a_catalogue_model_downloads(window, qtbot, monkeypatch, tmp_path, error_dialogs):
    from prunestudio.core.model import catalog

    marker = tmp_path / "pip-finished"
    monkeypatch.setattr(catalog, "_pip_download_cmd", lambda workdir, part: [
        sys.executable, "-c", f"import time, pathlib; time.sleep(60); pathlib.Path({str(marker)!r}).write_text('x')"])
    panel = window.model_panel
    panel.set_spec("gemma3-270m")
    panel.device.setCurrentText("cpu")
    click(qtbot, panel.load_button)
    worker = panel.job.worker
    assert worker is not None
    qtbot.waitUntil(lambda: "gemma-3-270m: downloading part 1 of 4" in panel.status.text.text(), timeout=LONG)
    assert panel.progress.maximum() == 6
    with qtbot.waitSignals([worker.cancelled, worker.finished], timeout=LONG, order="strict"):
        click(qtbot, panel.cancel_button)
    assert "cancelled" in panel.status.text.text().lower()
    assert window.state.loaded is None and not window.state.busy
    assert not catalog.is_ready("gemma3-270m") and not marker.exists()
    assert not any((catalog.cache_root() / "models").iterdir())
    assert error_dialogs == []
