"""GUI fixtures: isolated settings/data folders, a tiny model folder, the window, dialog stubs.

Deliberately not a ``tests/gui/conftest.py``: a second module named ``conftest`` replaces the root
one in ``sys.modules`` and breaks tests that do ``from conftest import ...`` at run time. Test
modules here use ``from _gui_fixtures import *`` instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

__all__ = ["isolated_env", "configured_app", "error_dialogs", "confirm_answers", "tiny_model_dir",
           "eval_file", "window", "screenshots", "SCREENSHOTS"]

SCREENSHOTS = Path(__file__).resolve().parents[1] / "screenshots"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """History, caches, logs and QSettings all live under tmp_path."""
    from PySide6.QtCore import QSettings

    for var, sub in (("PRUNESTUDIO_DATA", "data"), ("PRUNESTUDIO_CACHE", "cache"),
                     ("PRUNESTUDIO_LOG_DIR", "logs")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("PRUNESTUDIO_SETTINGS", str(tmp_path / "settings" / "prunestudio.ini"))
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    yield


@pytest.fixture(scope="session")
def configured_app(qapp):
    from prunestudio.gui.app import configure_application
    from PySide6.QtWidgets import QApplication

    if not isinstance(qapp, QApplication):
        pytest.fail(f"An earlier test created a {type(qapp).__name__}, not a QApplication; widgets "
                    "cannot exist in this process. Code that needs a Qt application for drawing "
                    "should create a QApplication (see core/experiment_plot.py).", pytrace=False)
    configure_application(qapp)
    return qapp


@pytest.fixture
def error_dialogs(monkeypatch):
    """Every error dialog the sink would show, recorded instead of shown (modal dialogs block)."""
    from prunestudio.gui import errors

    shown: list = []
    monkeypatch.setattr(errors, "show_dialog", lambda parent, report: shown.append(report))
    return shown


@pytest.fixture
def confirm_answers(monkeypatch):
    """Confirmation dialogs answer True unless a test appends False first."""
    from prunestudio.gui import dialogs

    answers: list[bool] = []
    asked: list[str] = []

    def confirm(parent, title, text, *a, **k):
        asked.append(text)
        return answers.pop(0) if answers else True

    monkeypatch.setattr(dialogs, "confirm", confirm)
    return answers, asked


@pytest.fixture
def tiny_model_dir(tmp_path, make_model, tokenizer):
    """A tiny random Llama (tests/conftest.py) and its tokenizer, saved as a Hugging Face folder."""
    d = tmp_path / "models" / "tiny-llama"
    model = make_model("llama")
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def eval_file(corpus_file):
    """A small evaluation text (the shared corpus fixture)."""
    return corpus_file


@pytest.fixture
def window(configured_app, qtbot, tmp_path, error_dialogs, confirm_answers):
    from prunestudio.gui.main_window import MainWindow
    from prunestudio.gui.state import AppState
    from prunestudio.gui.worker import wait_for_workers

    w = MainWindow(AppState(tmp_path / "data" / "history.sqlite3"))
    qtbot.addWidget(w)
    w.resize(1280, 820)
    w.show()
    qtbot.waitExposed(w)
    yield w
    wait_for_workers(20000)


@pytest.fixture
def screenshots():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
