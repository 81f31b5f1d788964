"""gui.app: the entry point starts, draws and quits; a start without console streams does not crash."""

from __future__ import annotations

import os
import subprocess
import sys

from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)


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
