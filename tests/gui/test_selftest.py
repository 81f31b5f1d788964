"""The packaged app's self-test: a tiny prune end to end through the app's own tasks and worker."""

from __future__ import annotations

from prunestudio.core.events import run_to_completion
from prunestudio.gui.selftest import self_test


def test_self_test_flow_passes(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESTUDIO_DATA", str(tmp_path / "data"))
    path = run_to_completion(self_test(str(tmp_path)))
    assert (tmp_path / "export" / "prunestudio.json").exists()
    assert path.endswith("export")
