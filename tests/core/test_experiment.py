"""Experiment grids (core/experiment/, core/cli/experiment.py): validation, resume, summary."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from prunestudio.core.errors import ConfigError
from prunestudio.core.events import run_to_completion
from prunestudio.core.experiment import (
    DENSE,
    GridSpec,
    collect,
    mean_std,
    run_experiment,
    summarize,
    summary_csv,
    summary_markdown,
)
from prunestudio.core.run.history import History


@pytest.fixture
def workdir(tmp_path, tokenizer, make_model, corpus_file):
    """A folder with a tiny saved model, a calibration corpus, an eval text and a PIQA file."""
    make_model("llama").save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    text = corpus_file.read_text(encoding="utf-8")
    (tmp_path / "eval.txt").write_text(text[: len(text) // 2], encoding="utf-8")
    (tmp_path / "data" / "piqa").mkdir(parents=True)
    (tmp_path / "data" / "piqa" / "valid.jsonl").write_text(
        "".join(json.dumps({"goal": f"Goal {i}", "sol1": "open it", "sol2": "close it"}) + "\n" for i in range(5)))
    (tmp_path / "data" / "piqa" / "valid-labels.lst").write_text("0\n1\n1\n0\n1\n")
    return tmp_path


def grid_dict(**over):
    g = {
        "name": "t",
        "model": "model",
        "sources": [{"label": "corpus", "source": "corpus.txt"}],
        "methods": ["wanda"],
        "sparsities": [0.5],
        "structures": ["unstructured"],
        "seeds": [0, 1],
        "calibration": {"nsamples": 4, "seqlen": 32},
        "eval": {"ppl": ["eval.txt"], "seqlen": 32, "max_windows": 3, "tasks": ["piqa"], "limit": 3,
                 "task_data": "data"},
    }
    g.update(over)
    return g


def write_grid(folder: Path, **over) -> Path:
    p = folder / "grid.json"
    p.write_text(json.dumps(grid_dict(**over)), encoding="utf-8")
    return p


def test_grid_runs_and_a_rerun_executes_no_cell(workdir):
    spec = GridSpec.load(write_grid(workdir))
    out = workdir / "res"
    first = run_experiment(spec, out)
    assert (first.executed, first.skipped) == (3, 0)  # dense + 2 seeds
    assert first.db_path == out / "history.sqlite3"
    rows = History(first.db_path).runs()
    assert len(rows) == 3 and {r.key for r in rows} == {c.key for c in spec.cells()}
    pruned = [r for r in rows if r.method == "wanda"]
    assert all(r.report["tasks"]["piqa"]["n"] == 3 for r in rows)
    assert all(abs(r.global_sparsity - 0.5) < 0.01 for r in pruned)
    dense = next(r for r in rows if r.method == DENSE)
    assert dense.report["ppl"]["eval.txt"] > 1 and dense.report["eval"]["windows"]["eval.txt"] == 3
    assert {(r.ppl_text, r.ppl_seqlen, r.ppl_windows) for r in rows} == {("eval.txt", 32, 3)}  # what each measured
    assert all(all(r.report.get("module_info", {}).values()) for r in rows)  # no empty entries

    again = run_experiment(GridSpec.load(workdir / "grid.json"), out)
    assert (again.executed, again.skipped) == (0, 3)
    assert len(History(first.db_path).runs()) == 3
    for name in ("summary.md", "summary.csv", "cells.csv"):
        assert (out / name).is_file()


def test_cli_experiment_resumes_and_honours_db(workdir, capsys):
    from prunestudio.core.cli.commands import main

    grid = write_grid(workdir, seeds=[0], dense_baseline=False, eval={"ppl": ["eval.txt"], "seqlen": 32,
                                                                       "max_windows": 2})
    db = workdir / "elsewhere" / "h.sqlite3"
    assert main(["-q", "experiment", str(grid), "--out", str(workdir / "o"), "--db", str(db)]) == 0
    assert db.is_file() and not (workdir / "o" / "history.sqlite3").exists()
    assert len(History(db).runs()) == 1
    capsys.readouterr()
    assert main(["experiment", str(grid), "--out", str(workdir / "o"), "--db", str(db)]) == 0
    assert "0 cells run, 1 already done" in capsys.readouterr().err
    assert main(["experiment", str(grid), "--out", str(workdir / "o"), "--db", str(db), "--dry-run"]) == 0
    assert "done" in capsys.readouterr().err


def test_dry_run_executes_nothing(workdir):
    spec = GridSpec.load(write_grid(workdir))
    res = run_experiment(spec, workdir / "dry", dry_run=True)
    assert res.executed == 0 and len(res.cells) == 3
    assert not (workdir / "dry" / "history.sqlite3").exists()


def test_cells_settings_and_keys(workdir):
    spec = GridSpec.load(write_grid(workdir, sparsities=[0.5, 0.6], structures=["unstructured", "2:4"],
                                    methods=["wanda", "magnitude"], seeds=[0, 1, 2],
                                    sources=["corpus.txt", "selfgen", "selfgen:corpus.txt"]))
    cells = spec.cells()
    assert cells[0].kind == DENSE
    assert [s for s in dict.fromkeys(c.setting for c in cells[1:])] == ["50%", "60%", "2:4"]
    assert len(cells) == 1 + 3 * 3 * 2 * 3
    assert [c.seed for c in cells[1:]] == sorted(c.seed for c in cells[1:])  # seeds outermost
    nm = [c for c in cells if c.setting == "2:4"]
    assert all(c.recipe.prune.structure == "2:4" and c.recipe.prune.sparsity == 0.5 for c in nm)
    # relative paths are resolved against the grid folder, but the key uses them as written
    c = next(c for c in cells if c.source_label == "selfgen:corpus.txt")
    assert c.recipe.calibration.source == "selfgen:" + str((workdir / "corpus.txt").resolve())
    assert len({c.key for c in cells}) == len(cells)
    # keys: evaluation settings count, batch sizes do not
    ev = grid_dict()["eval"]
    k0 = GridSpec.from_dict(grid_dict(), workdir).cells()[1].key
    assert GridSpec.from_dict(grid_dict(eval={**ev, "batch_size": 3}), workdir).cells()[1].key == k0
    assert GridSpec.from_dict(grid_dict(eval={**ev, "limit": 4}), workdir).cells()[1].key != k0
    assert GridSpec.from_dict(grid_dict(calibration={"nsamples": 8, "seqlen": 32}), workdir).cells()[1].key != k0
    # settings that cannot change the numbers stay out of the key, and so do defaults: a setting
    # added to the config later (with a default) leaves the keys of finished cells unchanged
    assert GridSpec.from_dict(grid_dict(prune={"offload": False}, device="cpu"), workdir).cells()[1].key == k0
    assert GridSpec.from_dict(grid_dict(prune={"batch_size": 8}), workdir).cells()[1].key == k0  # the default
    assert GridSpec.from_dict(grid_dict(prune={"batch_size": 2}), workdir).cells()[1].key != k0
    from prunestudio.core.config import CalibConfig, PruneConfig, Recipe
    from prunestudio.core.experiment.grid import _non_default

    assert _non_default(Recipe()) == {"prune": {}, "calibration": {}}
    assert _non_default(PruneConfig(method="sparsegpt", structure="2:4")) == {"method": "sparsegpt",
                                                                              "structure": "2:4"}
    assert _non_default(CalibConfig(nsamples=3)) == {"nsamples": 3}
    # the key does not depend on where the experiment lives
    import shutil

    moved = workdir / "moved"
    moved.mkdir()
    for name in ("corpus.txt", "eval.txt"):
        shutil.copy(workdir / name, moved / name)
    shutil.copytree(workdir / "data", moved / "data")
    assert GridSpec.from_dict(grid_dict(), moved).cells()[1].key == k0


@pytest.mark.parametrize("over, message", [
    ({"sources": []}, "'sources' must be a non-empty list"),
    ({"sources": [{"label": "x"}]}, r"sources\[0\] must be"),
    ({"sources": ["missing.jsonl"]}, "file not found: missing.jsonl"),
    ({"sources": ["selfgen:missing.jsonl"]}, "file not found: missing.jsonl"),
    ({"sources": ["selfgen", "selfgen"]}, "share the label"),
    ({"methods": ["wandaa"]}, "unknown method 'wandaa'"),
    ({"sparsities": [1.2]}, "between 0 and 1"),
    ({"sparsities": [0]}, "dense_baseline"),
    ({"structures": ["3:2"]}, "N:M structure needs 0 < N < M"),
    ({"seeds": [0, 0]}, "lists a seed twice"),
    ({"seeds": ["a"]}, "'seeds' must be"),
    ({"samples": 3}, "unknown grid key"),
    ({"calibration": {"seed": 3}}, "must not set seed"),
    ({"calibration": {"nsamples": 0}}, "number of calibration samples"),
    ({"prune": {"sparsity": 0.3}}, "must not set sparsity"),
    ({"prune": {"dampening": 0.3}}, "unknown prune setting"),
    ({"eval": {"tasks": ["piqa", "mmlu"]}}, "unknown zero-shot task 'mmlu'"),
    ({"eval": {"limit": 0}}, "eval.limit"),
    ({"eval": {"ppl": ["ptb"]}}, "neither a suite"),
    ({"eval": {"ppl": [], "tasks": []}}, "nothing to measure"),
    ({"eval": {"task_data": "nowhere"}}, "eval.task_data: folder not found"),
    ({"eval": {"windows": 3}}, "unknown eval setting"),
])
def test_grid_validation_errors(workdir, over, message):
    with pytest.raises(ConfigError, match=message):
        GridSpec.from_dict(grid_dict(**over), workdir)


def test_grid_file_errors_name_the_file(tmp_path, capsys):
    from prunestudio.core.cli.commands import main

    bad = tmp_path / "g.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="g.json is not valid JSON"):
        GridSpec.load(bad)
    with pytest.raises(ConfigError, match="Grid file not found"):
        GridSpec.load(tmp_path / "none.json")
    bad.write_text(json.dumps({"sources": ["selfgen"], "methods": ["x"]}), encoding="utf-8")
    assert main(["experiment", str(bad), "--out", str(tmp_path / "o")]) == 1
    assert "error: g.json: unknown method 'x'" in capsys.readouterr().err


def test_summary_mean_std_equal_a_direct_computation(workdir):
    spec = GridSpec.from_dict(grid_dict(seeds=[0, 1, 2], sources=["corpus.txt", "selfgen"]), workdir)
    values = {}
    finished = []
    for i, c in enumerate(spec.cells()):
        ppl = 10.0 + i * 1.7 + (i % 3) ** 2
        acc = 0.3 + 0.05 * (i % 4)
        values[c.key] = (ppl, acc)
        finished.append((c, {"ppl": {"eval.txt": ppl}, "tasks": {"piqa": {"acc": acc, "acc_norm": acc, "n": 3}},
                             "tasks_mean_acc": acc, "seconds": {}}))
    rows = summarize(spec, finished)
    assert [r.method for r in rows][0] == DENSE and len(rows) == 3
    for r in rows:
        cells = [c for c, _ in finished if c.source_label == r.source and c.method == r.method]
        ppls = [values[c.key][0] for c in cells]
        accs = [values[c.key][1] for c in cells]
        assert r.n == len(cells)
        assert r.mean["ppl:eval.txt"] == pytest.approx(statistics.mean(ppls))
        assert r.mean["zeroshot"] == pytest.approx(statistics.mean(accs))
        if len(cells) > 1:
            assert r.std["ppl:eval.txt"] == pytest.approx(statistics.stdev(ppls))
            assert r.std["zeroshot"] == pytest.approx(statistics.stdev(accs))
        else:
            assert r.std["ppl:eval.txt"] == 0.0
    table = list(csv.DictReader(summary_csv(spec, rows).splitlines()))
    corpus = next(t for t in table if t["calibration"] == "corpus.txt")
    ppls = [values[c.key][0] for c in spec.cells() if c.source_label == "corpus.txt"]
    assert float(corpus["ppl_eval.txt_mean"]) == pytest.approx(statistics.mean(ppls), rel=1e-5)
    assert float(corpus["ppl_eval.txt_std"]) == pytest.approx(statistics.stdev(ppls), rel=1e-5)
    md = summary_markdown(spec, rows)
    assert f"{statistics.mean(ppls):.2f} ± {statistics.stdev(ppls):.2f}" in md


def test_summary_of_a_real_run_matches_the_history(workdir):
    spec = GridSpec.load(write_grid(workdir, dense_baseline=False, seeds=[0, 1, 2],
                                    eval={"ppl": ["eval.txt"], "seqlen": 32, "max_windows": 2}))
    res = run_experiment(spec, workdir / "r")
    assert res.executed == 3
    finished = collect(spec, History(res.db_path))
    ppls = [rep["ppl"]["eval.txt"] for _, rep in finished]
    (row,) = summarize(spec, finished)
    assert row.n == 3 and row.seeds == [0, 1, 2]
    assert (row.mean["ppl:eval.txt"], row.std["ppl:eval.txt"]) == pytest.approx(
        (statistics.mean(ppls), statistics.stdev(ppls)))


def test_mean_std_edge_cases():
    assert mean_std([]) == (None, None)
    assert mean_std([2.0]) == (2.0, 0.0)
    assert mean_std([1.0, None, 3.0]) == pytest.approx((2.0, statistics.stdev([1.0, 3.0])))


def test_summary_writes_tables_and_no_qt(workdir):
    import sys

    from prunestudio.core.experiment import write_summary

    spec = GridSpec.from_dict(grid_dict(sources=["corpus.txt", "selfgen"]), workdir)
    finished = [(c, {"ppl": {"eval.txt": 20.0 + i}, "tasks_mean_acc": 0.4, "tasks": {}, "seconds": {}})
                for i, c in enumerate(spec.cells())]

    class FakeHistory:
        def runs(self, key):
            from types import SimpleNamespace

            return [SimpleNamespace(key=c.key, report=r) for c, r in finished if c.key == key]

    qt_before = "PySide6.QtGui" in sys.modules
    files = write_summary(spec, FakeHistory(), workdir / "p")
    assert {"summary.md", "summary.csv", "cells.csv"} <= set(files)
    assert "plots.png" not in files
    assert ("PySide6.QtGui" in sys.modules) == qt_before


def test_settings_share_one_calibration_set(workdir):
    from prunestudio.core.events import PhaseStarted
    from prunestudio.core.experiment import iter_experiment

    spec = GridSpec.from_dict(grid_dict(sources=["selfgen"], sparsities=[0.5, 0.6], structures=["unstructured", "2:4"],
                                        seeds=[0], dense_baseline=False,
                                        eval={"ppl": ["eval.txt"], "seqlen": 32, "max_windows": 2}), workdir)
    gen = iter_experiment(spec, workdir / "share")
    events: list = []
    res = run_to_completion(gen, events.append)
    assert res.executed == 3
    assert sum(isinstance(e, PhaseStarted) and e.phase == "generate" for e in events) == 1
    rows = History(res.db_path).runs()
    assert [r.report["calibration_reused"] for r in rows] == [False, True, True]
    assert len({r.report["calibration"]["sha256"] for r in rows}) == 1


def test_a_resumed_grid_reads_its_saved_self_generated_sets(workdir):
    """A second run of the grid (a new runner, a new setting) prunes with the set the first one
    generated and saved, the same tokens, without generating; a set that cannot be read is built again."""
    from prunestudio.core.events import Message, PhaseStarted
    from prunestudio.core.experiment import iter_experiment

    def run(seeds=(0,), **over):
        spec = GridSpec.from_dict(grid_dict(sources=["selfgen"], seeds=list(seeds), dense_baseline=False,
                                            eval={"ppl": ["eval.txt"], "seqlen": 32, "max_windows": 2}, **over),
                                  workdir)
        events: list = []
        res = run_to_completion(iter_experiment(spec, workdir / "resume"), events.append)
        generated = sum(isinstance(e, PhaseStarted) and e.phase == "generate" for e in events)
        notes = [e.text for e in events if isinstance(e, Message)]
        return res, generated, notes

    first, generated, _ = run(sparsities=[0.5])
    assert (first.executed, generated) == (1, 1)
    saved = sorted((workdir / "resume" / "calibration").glob("*.calib.jsonl"))
    assert len(saved) == 1

    second, generated, notes = run(sparsities=[0.6])
    assert (second.executed, generated) == (1, 0)
    assert any("read from " + saved[0].name in n for n in notes)
    rows = {r.sparsity: r for r in History(first.db_path).runs()}
    assert rows[0.5].report["calibration"]["sha256"] == rows[0.6].report["calibration"]["sha256"]
    assert rows[0.6].report["calibration_reused"] and not rows[0.5].report["calibration_reused"]

    saved[0].write_text("not a calibration set\n", encoding="utf-8")
    third, generated, notes = run(sparsities=[0.7])
    assert (third.executed, generated) == (1, 1)
    assert any("Building the set again" in n for n in notes)
    rows = {r.sparsity: r for r in History(first.db_path).runs()}
    assert rows[0.7].report["calibration"]["sha256"] == rows[0.5].report["calibration"]["sha256"]
    assert sorted((workdir / "resume" / "calibration").glob("*.calib.jsonl")) == saved  # rewritten whole

    _, generated, _ = run(sparsities=[0.8], seeds=[1])  # another seed: another set
    assert generated == 1
    assert len(list((workdir / "resume" / "calibration").glob("*.calib.jsonl"))) == 2
