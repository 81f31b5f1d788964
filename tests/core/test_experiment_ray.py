"""Experiment grids on Ray (core/experiment/ray_executor.py, ray_tasks.py): one local Ray of 2 CPUs
for the module, a 4-cell grid on a tiny model.

Without ray the tests are skipped with the reason; in CI (``CI=true``) they fail instead: CI
installs the ``cluster`` extra, and a skip there would hide tests that stopped running.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import CORPUS, byte_tokenizer, in_ci, tiny_model
from prunestudio.core.errors import Cancelled, ConfigError
from prunestudio.core.events import Message, run_to_completion
from prunestudio.core.experiment import (
    CellFailed,
    CellFinished,
    CellStarted,
    GridProgress,
    GridSpec,
    iter_experiment,
    make_executor,
    run_experiment,
)
from prunestudio.core.run.history import History

try:
    import ray
except ImportError:  # the cluster extra is not installed
    ray = None

CPUS = 2


@pytest.fixture(scope="module")
def ray_module():
    """The ray module; skipped with the reason where it is missing, failed in CI."""
    if ray is None:
        msg = "ray is not installed (pip install 'prunestudio[cluster]')"
        if in_ci():
            pytest.fail(f"{msg}; CI installs the cluster extra (CI=true)", pytrace=False)
        pytest.skip(msg)
    return ray


@pytest.fixture(scope="module")
def ray_session(ray_module):
    """One local Ray for the module (its start takes seconds): 2 CPUs, no dashboard."""
    ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny saved model, a calibration corpus, an evaluation text and a PIQA file, shared by the
    module (a Ray worker keeps the model it loaded for the next cell of the same grid folder)."""
    d = tmp_path_factory.mktemp("raygrid")
    tok = byte_tokenizer(300)
    tiny_model("llama", vocab_size=len(tok)).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    (d / "corpus.txt").write_text((CORPUS + "\n") * 60, encoding="utf-8")
    (d / "eval.txt").write_text((CORPUS + "\n") * 30, encoding="utf-8")
    (d / "tiny.txt").write_text("Too short.", encoding="utf-8")
    (d / "data" / "piqa").mkdir(parents=True)
    (d / "data" / "piqa" / "valid.jsonl").write_text(
        "".join(json.dumps({"goal": f"Goal {i}", "sol1": "open it", "sol2": "close it"}) + "\n" for i in range(5)))
    (d / "data" / "piqa" / "valid-labels.lst").write_text("0\n1\n1\n0\n1\n")
    return d


def grid(folder: Path, **over) -> GridSpec:
    """Four cells: the dense baseline and Wanda at 50%, 60% and 2:4, which share one calibration set."""
    g = {"name": "ray", "model": "model", "sources": [{"label": "corpus", "source": "corpus.txt"}],
         "methods": ["wanda"], "sparsities": [0.5, 0.6], "structures": ["unstructured", "2:4"], "seeds": [0],
         "calibration": {"nsamples": 4, "seqlen": 32},
         "eval": {"ppl": ["eval.txt"], "seqlen": 32, "max_windows": 2, "tasks": ["piqa"], "limit": 3,
                  "task_data": "data"}}
    g.update(over)
    return GridSpec.from_dict(g, folder)


def numbers(report: dict) -> tuple:
    """What a cell measured: perplexity, zero-shot accuracy, the sparsity reached, the calibration set."""
    return (report["ppl"], report.get("tasks"), report.get("global_sparsity"),
            (report.get("calibration") or {}).get("sha256"))


@pytest.fixture(scope="module")
def local_numbers(workdir, tmp_path_factory):
    """The local executor's results, cell key -> numbers (torch on one thread, as each Ray cell)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = run_experiment(grid(workdir), tmp_path_factory.mktemp("local"))
    finally:
        torch.set_num_threads(n)
    assert res.executed == 4
    return {r.key: numbers(r.report) for r in History(res.db_path).runs()}


def ray_executor():
    return make_executor("ray", cpus_per_cell=1)


def _ray(**kw):
    from prunestudio.core.experiment.ray_executor import RayExecutor

    kw.setdefault("cpus_per_cell", 1)
    return RayExecutor(**kw)


def rows_by_key(db: Path) -> dict[str, dict]:
    rows = History(db).runs()
    assert len({r.key for r in rows}) == len(rows), "a cell written twice"
    return {r.key: r.report for r in rows}


def test_ray_cells_equal_the_local_ones_and_a_rerun_runs_nothing(ray_session, workdir, local_numbers, tmp_path):
    spec = grid(workdir)
    events: list = []
    # the board is read every poll_s: often, so that the tiny model's blocks (a second or less on an
    # idle machine) are seen while they run (at the default 0.5 s an idle run once saw none)
    res = run_experiment(spec, tmp_path / "ray", executor=_ray(poll_s=0.02), on_event=events.append)
    assert (res.executed, res.skipped, res.failed) == (4, 0, {})
    got = rows_by_key(res.db_path)
    assert set(got) == set(local_numbers) == {c.key for c in spec.cells()}
    for key, report in got.items():
        assert numbers(report) == local_numbers[key], key
        assert report["executor"]["name"] == "ray" and report["executor"]["pid"] != os.getpid()  # a worker ran it
    # one calibration set for the three pruned cells, and every cell started and finished once
    assert len({n[3] for n in map(numbers, got.values()) if n[3]}) == 1
    assert sorted(e.index for e in events if isinstance(e, CellStarted)) == [0, 1, 2, 3]
    assert sorted(e.index for e in events if isinstance(e, CellFinished)) == [0, 1, 2, 3]
    grids = [e for e in events if isinstance(e, GridProgress)]
    assert grids[-1].done == 4 and grids[-1].queued == grids[-1].running == grids[-1].failed == 0
    assert all(e.done + e.running + e.queued + e.failed == 4 for e in grids)
    assert any(c.doing.startswith("block ") for e in grids for c in e.cells)  # each cell's current block

    events.clear()
    again = run_experiment(grid(workdir), tmp_path / "ray", executor=ray_executor(), on_event=events.append)
    assert (again.executed, again.skipped) == (4 - 4, 4)
    assert not any(isinstance(e, (CellStarted, GridProgress)) for e in events)  # nothing was sent to Ray
    assert len(History(res.db_path).runs()) == 4


def test_a_worker_killed_mid_cell_is_retried_and_its_cell_written_once(ray_session, workdir, local_numbers,
                                                                        tmp_path):
    spec = grid(workdir)
    victim = next(c for c in spec.cells() if c.setting == "60%")
    marker = tmp_path / "crash"
    marker.write_text(victim.key, encoding="utf-8")
    events: list = []
    res = run_experiment(spec, tmp_path / "out", executor=_ray(crash_marker=str(marker)), on_event=events.append)
    assert not marker.exists() and (tmp_path / "crash.fired").exists()  # the worker did die in the cell
    assert any(isinstance(e, Message) and "worker died" in e.text for e in events)
    assert (res.executed, res.failed) == (4, {})
    got = rows_by_key(res.db_path)
    assert len(History(res.db_path).runs()) == 4
    assert numbers(got[victim.key]) == local_numbers[victim.key]


def test_a_bad_input_fails_its_cells_only_and_is_recorded(ray_session, workdir, tmp_path, capsys):
    from prunestudio.core.cli.commands import main

    spec = grid(workdir, sources=[{"label": "corpus", "source": "corpus.txt"}, {"label": "tiny", "source": "tiny.txt"}],
                structures=["unstructured"], sparsities=[0.5], dense_baseline=False)
    bad = next(c for c in spec.cells() if c.source_label == "tiny")
    events: list = []
    res = run_experiment(spec, tmp_path / "b", executor=ray_executor(), on_event=events.append)
    assert res.executed == 1 and list(res.failed) == [bad.key]
    (failed,) = [e for e in events if isinstance(e, CellFailed)]
    assert failed.key == bad.key and "calibration set could not be built" in failed.error
    hist = History(res.db_path)
    assert [r.key for r in hist.runs()] == [c.key for c in spec.cells() if c.key != bad.key]
    assert hist.failures() == [(bad.key, bad.describe(), failed.error)]
    # the CLI says so and exits 1; the finished cell is not run again, the failed one is tried again
    (workdir / "bad.json").write_text(json.dumps({
        "name": "ray", "model": "model", "sources": ["corpus.txt", "tiny.txt"], "methods": ["wanda"],
        "dense_baseline": False, "calibration": {"nsamples": 4, "seqlen": 32},
        "eval": {"ppl": ["eval.txt"], "seqlen": 32, "max_windows": 2}}), encoding="utf-8")
    out = tmp_path / "cli"
    assert main(["experiment", str(workdir / "bad.json"), "--out", str(out), "--executor", "ray",
                 "--cpus-per-cell", "1"]) == 1
    assert len(History(out / "history.sqlite3").runs()) == 1
    assert len(History(out / "history.sqlite3").failures()) == 1
    err = capsys.readouterr().err
    assert "failed (wanda 50% | tiny.txt | seed 0): its calibration set could not be built" in err
    assert "1 cells run, 0 already done, 1 failed (a rerun tries them again)" in err
    assert "cells [" in err and "1/2 done, 0 running, 0 queued, 1 failed" in err  # the progress lines
    assert main(["experiment", str(workdir / "bad.json"), "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert sum("done" in x for x in lines) == 1 and sum("failed" in x and "tiny.txt" in x for x in lines) == 1
    # the input fixed, a rerun runs the failed cell alone and forgets its failure
    (workdir / "tiny.txt").write_text((CORPUS + "\n") * 60, encoding="utf-8")
    try:
        assert main(["-q", "experiment", str(workdir / "bad.json"), "--out", str(out), "--executor", "ray",
                     "--cpus-per-cell", "1"]) == 0
    finally:
        (workdir / "tiny.txt").write_text("Too short.", encoding="utf-8")
    assert len(History(out / "history.sqlite3").runs()) == 2 and History(out / "history.sqlite3").failures() == []


def test_cancel_leaves_whole_rows_and_frees_the_cluster(ray_session, workdir, local_numbers, tmp_path):
    finished: list = []

    def on_event(ev):
        if isinstance(ev, CellFinished):
            finished.append(ev)

    gen = iter_experiment(grid(workdir), tmp_path / "c", executor=ray_executor(), should_stop=lambda: bool(finished))
    with pytest.raises(Cancelled):
        run_to_completion(gen, on_event)
    got = rows_by_key(tmp_path / "c" / "history.sqlite3")
    assert len(got) == len(finished) == 1  # written when it arrived; nothing after the cancel
    for key, report in got.items():
        assert numbers(report) == local_numbers[key]  # a whole row, not a half-written one
    # the running cells were cancelled (their workers ended): every CPU is free again
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) < CPUS and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == CPUS
    res = run_experiment(grid(workdir), tmp_path / "c", executor=ray_executor())
    assert (res.executed, res.skipped) == (3, 1)
    assert set(rows_by_key(res.db_path)) == set(local_numbers)


def test_cells_ask_for_what_a_node_has(ray_module):
    ex = _ray()
    assert ex.shape([{"CPU": 8.0}]) == (0.0, 1.0)  # this test asked for one CPU per cell
    assert _ray(cpus_per_cell=None).shape([{"CPU": 8.0}, {"CPU": 16.0}]) == (0.0, 16.0)  # one cell per node
    assert _ray(cpus_per_cell=None).shape([{"CPU": 16.0, "GPU": 4.0}]) == (1.0, 1.0)  # one cell per GPU
    with pytest.raises(ConfigError, match="asks for 1 GPU"):
        _ray(gpus_per_cell=1).shape([{"CPU": 8.0}])
    with pytest.raises(ConfigError, match="asks for 4 CPU"):
        _ray(cpus_per_cell=4).shape([{"CPU": 2.0}])


def test_without_ray_the_executor_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    import sys

    from prunestudio.core.cli.commands import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as when it is not installed
    with pytest.raises(ConfigError, match=r"pip install 'prunestudio\[cluster\]'"):
        make_executor("ray")
    g = tmp_path / "g.json"
    g.write_text(json.dumps({"sources": ["selfgen"]}), encoding="utf-8")
    assert main(["experiment", str(g), "--out", str(tmp_path / "o"), "--executor", "ray"]) == 1
    err = capsys.readouterr().err
    assert "needs Ray, which is not installed" in err and "prunestudio[cluster]" in err
    with pytest.raises(ConfigError, match="go with --executor ray"):
        make_executor("local", address="auto")


def test_the_progress_view_draws_the_counts_and_each_running_cells_block():
    import io

    from prunestudio.core.cli.progress import ProgressPrinter
    from prunestudio.core.experiment import RunningCell

    class Tty(io.StringIO):
        def isatty(self):
            return True

    ev = GridProgress(4, 1, 2, 1, 0, (RunningCell(1, "wanda 50% | c | seed 0", "block 2/3"),
                                      RunningCell(2, "wanda 60% | c | seed 0", "ppl:eval.txt")))
    tty = Tty()
    ProgressPrinter(stream=tty)(ev)
    assert tty.getvalue() == ("\rcells [######------------------] 1/4 done, 2 running, 1 queued, 0 failed"
                              " | #2 block 2/3; #3 ppl:eval.txt")
    log = io.StringIO()  # a log file: a line when a count changes, not at every block
    p = ProgressPrinter(stream=log)
    p(ev)
    p(GridProgress(4, 1, 2, 1, 0, (RunningCell(1, "wanda 50% | c | seed 0", "block 3/3"),)))
    assert log.getvalue().splitlines() == ["cells [######------------------] 1/4 done, 2 running, 1 queued, 0 failed",
                                           "  running #2 wanda 50% | c | seed 0: block 2/3",
                                           "  running #3 wanda 60% | c | seed 0: ppl:eval.txt"]
