"""core.memory estimates, the resource helper, the icon, settings isolation and the entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from prunestudio.core.prune.memory import available_memory, estimate_run_memory, format_bytes

INFO = {"parameters": 134_515_008, "prunable_parameters": 30 * (576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536),
        "blocks": 30, "hidden_size": 576,
        "modules_per_block": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]}


def test_estimate_parts_and_scaling():
    w = estimate_run_memory(INFO, 128, 2048, "wanda", 4, 8)
    assert w["weights"] == INFO["parameters"] * 4
    assert w["activations"] == 128 * 2048 * 576 * 4 * 2
    assert w["total"] == w["weights"] + w["activations"] + w["statistics"] + w["block"] + w["margin"]
    s = estimate_run_memory(INFO, 128, 2048, "sparsegpt", 4, 8)
    assert s["statistics"] > 100 * w["statistics"]  # Hessians are in*in
    m = estimate_run_memory(INFO, 128, 2048, "magnitude", 4, 8)
    assert m["activations"] == 0 and m["statistics"] == 0
    assert estimate_run_memory(INFO, 256, 2048, "wanda", 4, 8)["activations"] == 2 * w["activations"]
    assert estimate_run_memory(INFO, 128, 2048, "wanda", 2, 8)["weights"] == w["weights"] // 2


def test_estimate_with_real_shapes(make_model):
    from prunestudio.core.model.loading import describe
    from prunestudio.core.prune.memory import module_shapes

    model = make_model("llama")
    info = describe(model)
    shapes = module_shapes(model)
    assert shapes["mlp.down_proj"] == (64, 128)
    with_shapes = estimate_run_memory({**info, "module_shapes": shapes}, 8, 32, "sparsegpt", 4, 8)
    # q/k/v share one input, gate/up another: 4 distinct inputs, 3 of width 64 and 1 of 128
    assert with_shapes["statistics"] == 4 * (3 * 64 + 128) + 4 * (3 * 64 * 64 + 128 * 128)


def test_available_memory_and_format():
    a = available_memory("cpu")
    assert a["host_available"] and a["host_total"] >= a["host_available"]
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(None) == "unknown"


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


def test_settings_are_isolated_and_window_state_persists(window, qtbot, tmp_path):
    from prunestudio.gui.main_window import MainWindow
    from prunestudio.gui.settings import qsettings

    assert Path(qsettings().fileName()).is_relative_to(tmp_path)
    assert window.model_panel.kind() == "demo"  # first start: the demo model is preselected
    window.show_step(2)
    window.close()
    again = MainWindow(window.state)
    qtbot.addWidget(again)
    assert again.steps.currentRow() == 2


def test_entry_point_starts_and_quits(tmp_path):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PRUNESTUDIO_DATA": str(tmp_path / "d"),
           "PRUNESTUDIO_SETTINGS": str(tmp_path / "s.ini"), "PRUNESTUDIO_LOG_DIR": str(tmp_path / "logs"),
           "PRUNESTUDIO_CACHE": str(tmp_path / "c")}
    shot = tmp_path / "window.png"
    proc = subprocess.run([sys.executable, "-m", "prunestudio.gui", "--smoke-test", "--screenshot", str(shot)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from PySide6.QtGui import QImage

    img = QImage(str(shot))
    assert img.width() > 400 and img.height() > 300  # the main window, drawn
    assert (tmp_path / "logs" / "prunestudio.log").exists()
    assert "Prune Studio closed" in (tmp_path / "logs" / "prunestudio.log").read_text()


def test_std_stream_guard(monkeypatch):
    from prunestudio.gui.app import guard_std_streams

    monkeypatch.setattr(sys, "stdout", None)
    monkeypatch.setattr(sys, "stderr", None)
    guard_std_streams()
    print("no console, no crash")
    assert sys.stdout is not None and sys.stderr is not None
    sys.stdout.close()
    sys.stderr.close()


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
