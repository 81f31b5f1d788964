"""Cancel mid-run then run again; worker errors reach the one error dialog and the app stays usable."""

from __future__ import annotations

import sys

import numpy as np
from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import LONG, click, load_folder, screenshot, start_run
from prunestudio.core.events import ModulePruned, RunStarted
from prunestudio.core.prune.result import is_incomplete
from prunestudio.core.run import run as run_mod
from prunestudio.gui.state import ModelStatus, RunStatus


def _gated_iter_prune(real):
    """iter_prune that, after its first pruned module, waits (in the worker thread) for Cancel."""

    def gated(model, ids, cfg, device, should_stop):
        gen = real(model, ids, cfg, device, should_stop)
        result = None
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            yield ev
            if isinstance(ev, ModulePruned):
                # should_stop is the worker's threading.Event.is_set: wait on the event itself
                assert should_stop.__self__.wait(30), "the test never cancelled"
        return result

    return gated


def _magnitude(window):
    p = window.prune_panel
    p.method.setCurrentIndex(p.method.findData("magnitude"))
    p.sparsity.setValue(50.0)


def test_cancel_mid_run_then_second_run(window, qtbot, monkeypatch, tiny_model_dir, error_dialogs, screenshots):
    st = window.state
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    _magnitude(window)
    first_model = st.loaded
    real = run_mod.iter_prune
    monkeypatch.setattr(run_mod, "iter_prune", _gated_iter_prune(real))

    worker = start_run(qtbot, window)
    with qtbot.waitSignal(worker.yielded, timeout=LONG, check_params_cb=lambda ev: isinstance(ev, ModulePruned)):
        pass
    assert window.act_cancel.isEnabled()
    with qtbot.waitSignals([worker.cancelled, worker.finished], timeout=LONG, order="strict"):
        window.act_cancel.trigger()  # Esc
    assert st.run_status == RunStatus.CANCELLED
    assert st.model_status == ModelStatus.INCOMPLETE and is_incomplete(first_model.model)
    assert not st.exportable() and not window.eval_panel.export_button.isEnabled()
    assert window.steps.kinds()["model"] == "warn"
    assert not st.busy and window.run_panel.start_button.isEnabled()
    # the partly filled heatmap shows exactly what was pruned before the cancel
    assert np.isfinite(window.run_panel.heatmap.values()).sum() == 1
    screenshot(window, screenshots / "run-cancelled.png")

    # a second run reloads the dense model first and completes
    monkeypatch.setattr(run_mod, "iter_prune", real)
    worker = start_run(qtbot, window)
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    assert st.run_status == RunStatus.DONE, window.run_panel.status.text.text()
    assert st.loaded is not first_model, "the partly pruned model must be reloaded, not reused"
    assert not is_incomplete(st.loaded.model)
    assert np.allclose(window.run_panel.heatmap.values(), 0.5)
    assert any("reloading the dense model" in line for line in window.run_panel.log.lines())
    assert st.exportable()
    assert error_dialogs == []


def test_worker_error_shows_dialog_and_app_stays_usable(window, qtbot, monkeypatch, tiny_model_dir, error_dialogs):
    st = window.state
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    _magnitude(window)
    real = run_mod.iter_prune

    def broken(model, ids, cfg, device, should_stop):
        yield RunStarted("magnitude", 3, ("a",), (0.5,) * 3, 0, 0, "cpu")
        raise RuntimeError("boom in the engine")

    monkeypatch.setattr(run_mod, "iter_prune", broken)
    worker = start_run(qtbot, window)
    with qtbot.waitSignal(worker.errored, timeout=LONG) as blocker:
        pass
    info = blocker.args[0]
    assert isinstance(info.exception, RuntimeError)  # the object, not a string
    assert "Traceback" in info.traceback and "boom in the engine" in info.traceback
    qtbot.waitUntil(lambda: len(error_dialogs) == 1, timeout=5000)
    rep = error_dialogs[0]
    assert "boom in the engine" in rep.text and "RuntimeError" in rep.details
    assert st.run_status == RunStatus.FAILED and not st.busy

    # still usable: the next run works
    monkeypatch.setattr(run_mod, "iter_prune", real)
    worker = start_run(qtbot, window)
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    assert st.run_status == RunStatus.DONE
    assert len(error_dialogs) == 1


def test_user_error_from_engine_has_message_hint_details(window, qtbot, monkeypatch, tmp_path, error_dialogs):
    """A PruneStudioError (here: a folder that is no model) shows its sentence, not a traceback."""
    (tmp_path / "empty").mkdir()
    from prunestudio.gui import dialogs

    panel = window.model_panel
    monkeypatch.setattr(dialogs, "get_directory", lambda *a, **k: str(tmp_path / "empty"))
    click(qtbot, panel.folder.button)
    click(qtbot, panel.load_button)
    with qtbot.waitSignal(panel.job.worker.finished, timeout=LONG):
        pass
    qtbot.waitUntil(lambda: len(error_dialogs) == 1, timeout=5000)
    assert "config.json" in error_dialogs[0].text
    assert "Traceback" in error_dialogs[0].details
    assert window.state.loaded is None and window.state.model_status == ModelStatus.NONE
    assert panel.load_button.isEnabled()


def test_cancel_while_the_default_model_downloads(window, qtbot, monkeypatch, tmp_path, error_dialogs):
    """First start without the default model: Cancel ends the download; nothing is left, the app
    is idle and no error is shown."""
    from prunestudio.core.model import catalog
    from prunestudio.core.model import demo as demo_model

    marker = tmp_path / "pip-finished"
    monkeypatch.setattr(catalog, "_pip_download_cmd", lambda workdir, part: [
        sys.executable, "-c", f"import time, pathlib; time.sleep(60); pathlib.Path({str(marker)!r}).write_text('x')"])
    panel = window.model_panel
    panel.radio["demo"].setChecked(True)
    panel.device.setCurrentText("cpu")
    click(qtbot, panel.load_button)
    worker = panel.job.worker
    assert worker is not None
    qtbot.waitUntil(lambda: "Default model" in panel.status.text.text(), timeout=LONG)
    assert panel.cancel_button.isEnabled()
    with qtbot.waitSignals([worker.cancelled, worker.finished], timeout=LONG, order="strict"):
        click(qtbot, panel.cancel_button)
    assert "cancelled" in panel.status.text.text().lower()
    assert window.state.loaded is None and not window.state.busy
    assert panel.load_button.isEnabled()
    assert not demo_model.is_demo_ready() and not marker.exists()
    assert not any((demo_model.cache_root() / "models").iterdir())
    assert error_dialogs == []
