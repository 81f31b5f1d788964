"""The History step's grid bar (gui/panels/history_grid.py): a grid run from the app, its progress
(done / running / queued / failed and each running cell's block), and the sentences it refuses with."""

from __future__ import annotations

import json
import sys

from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)


def write_grid(tmp_path, model_dir, eval_file):
    g = {"name": "gui", "model": str(model_dir), "sources": [str(eval_file)], "methods": ["wanda"],
         "sparsities": [0.5, 0.6], "seeds": [0], "calibration": {"nsamples": 4, "seqlen": 32},
         "eval": {"ppl": [str(eval_file)], "seqlen": 32, "max_windows": 2}}
    p = tmp_path / "grid.json"
    p.write_text(json.dumps(g), encoding="utf-8")
    return p


def test_a_grid_runs_from_the_history_step_into_its_table(window, qtbot, tmp_path, tiny_model_dir, eval_file):
    window.show_step(5)
    h = window.history_panel
    bar = h.grid_bar
    grid = write_grid(tmp_path, tiny_model_dir, eval_file)
    bar.grid.setText(str(grid))
    assert bar.where.currentData() == "local" and not bar.address.isEnabled()
    seen: list[str] = []
    bar.job.state.history_changed.connect(lambda: seen.append(bar.text()))
    bar.run_button.click()
    assert bar.job.running and not bar.run_button.isEnabled() and bar.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not bar.job.running, timeout=120000)
    assert h.table.rowCount() == 3  # the dense baseline and two sparsities, in the app's history
    assert bar.text() == "3 done, 0 running, 0 queued, 0 failed"
    assert bar.bar.value() == bar.bar.maximum() == 3
    assert "3 cells run, 0 already done" in bar.status.text.text()
    assert (tmp_path / "grid-results" / "summary.md").is_file()
    assert seen and seen[0].startswith("1 done, 0 running, 2 queued")  # the table refreshed per cell
    # a second run skips every cell
    bar.run_button.click()
    qtbot.waitUntil(lambda: not bar.job.running, timeout=60000)
    assert "0 cells run, 3 already done" in bar.status.text.text()
    assert h.table.rowCount() == 3


def test_the_bar_draws_the_ray_executors_counts(window):
    from prunestudio.core.experiment import CellFinished, CellStarted, GridProgress, RunningCell
    from prunestudio.core.events import PhaseStarted

    bar = window.history_panel.grid_bar
    bar._reset(0)
    bar.on_event(PhaseStarted("experiment", total=5))
    bar.on_event(CellStarted(1, 5, "wanda 50% | c | seed 0", "k1"))
    bar.on_event(GridProgress(5, 1, 2, 1, 1, (RunningCell(1, "wanda 50% | c | seed 0", "block 2/3"),
                                              RunningCell(3, "wanda 2:4 | c | seed 0", "ppl:eval.txt"),
                                              RunningCell(-1, "1 calibration set(s)", "building"))))
    bar.on_event(CellFinished(0, 5, "dense baseline", "k0", {}, 1.0))
    assert bar.text().splitlines() == ["1 done, 2 running, 1 queued, 0 failed",
                                       "#2 wanda 50% | c | seed 0: block 2/3",
                                       "#4 wanda 2:4 | c | seed 0: ppl:eval.txt",
                                       "1 calibration set(s): building"]


def test_the_bar_refuses_in_one_sentence(window, tmp_path, tiny_model_dir, eval_file, monkeypatch):
    bar = window.history_panel.grid_bar
    bar.run_button.click()
    assert bar.status.text.text() == "Choose a grid file (JSON) first."
    bar.grid.setText(str(write_grid(tmp_path, tiny_model_dir, eval_file)))
    bar.where.setCurrentIndex(bar.where.findData("cluster"))
    assert bar.address.isEnabled()
    bar.run_button.click()
    assert "cluster's address" in bar.status.text.text() and not bar.job.running
    monkeypatch.setitem(sys.modules, "ray", None)  # as where Ray is not installed
    bar.where.setCurrentIndex(bar.where.findData("ray"))
    bar.run_button.click()
    assert "pip install 'prunestudio[cluster]'" in bar.status.text.text() and not bar.job.running


def test_cancel_grid_stops_after_whole_rows(window, qtbot, tmp_path, tiny_model_dir, eval_file, monkeypatch):
    import threading

    from prunestudio.core.experiment import CellFinished
    from prunestudio.core.experiment.session import CellRunner

    # the tiny cells take milliseconds: a cell after the first waits (in the worker) until the
    # user's click on Cancel has landed, so the test does not race the grid to its end
    clicked = threading.Event()
    started: list[int] = []
    real_run_cell = CellRunner.run_cell

    def run_cell(self, cell, should_stop, *a, **k):
        started.append(1)
        if len(started) > 1:
            clicked.wait(30)
        return (yield from real_run_cell(self, cell, should_stop, *a, **k))

    monkeypatch.setattr(CellRunner, "run_cell", run_cell)

    def on_event(ev):
        if isinstance(ev, CellFinished) and not clicked.is_set():
            bar.cancel_button.click()
            clicked.set()

    bar = window.history_panel.grid_bar
    bar.grid.setText(str(write_grid(tmp_path, tiny_model_dir, eval_file)))
    bar.run_button.click()
    bar.job.worker.yielded.connect(on_event)
    qtbot.waitUntil(lambda: not bar.job.running, timeout=120000)
    assert bar.status.text.text() == "Cancelled."
    rows = bar.state.history().runs()
    assert 1 <= len(rows) < 3 and all(r.report.get("ppl") for r in rows)  # whole rows, the rest not run
    assert bar.run_button.isEnabled() and not bar.cancel_button.isEnabled()
