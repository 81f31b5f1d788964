"""Reports (core/run/report.py): a run's names exactly what was evaluated; the dense baseline's,
the plain evaluation's and their measurements; no private path in any of them."""

from __future__ import annotations

import json

import pytest
from conftest import CORPUS, tiny_model
from prunestudio.core.config import PruneConfig, Recipe
from prunestudio.core.evaluate.zeroshot import TaskResult
from prunestudio.core.events import Message, PhaseStarted, run_to_completion
from prunestudio.core.prune.pipeline import iter_prune
from prunestudio.core.run.evaluation import EvalSettings
from prunestudio.core.run.job import iter_job
from prunestudio.core.run.load import LoadArgs, iter_load
from prunestudio.core.run.report import (
    add_perplexities,
    add_zeroshot,
    build_report,
    dense_report,
    eval_report,
    suite_eval,
)


@pytest.fixture(scope="module")
def private(tmp_path_factory, tokenizer):
    """A tiny model and two evaluation texts in a folder whose path must never reach a report."""
    d = tmp_path_factory.mktemp("private") / "my files"
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(d / "tiny-llama")
    tokenizer.save_pretrained(d / "tiny-llama")
    for name in ("first.txt", "second.txt"):
        (d / name).write_text((CORPUS + "\n") * 20, encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def pruned(private):
    """(loaded model, its magnitude PruneResult)."""
    loaded = run_to_completion(iter_load(LoadArgs(str(private / "tiny-llama"), "cpu", "fp32")))
    return loaded, run_to_completion(iter_prune(loaded.model, None, PruneConfig(method="magnitude")))


def test_a_job_reports_the_one_set_it_evaluated(private):
    recipe = Recipe(model=str(private / "tiny-llama"), device="cpu", dtype="fp32",
                    prune=PruneConfig(method="magnitude"),
                    eval_ppl=(str(private / "first.txt"), str(private / "second.txt")),
                    eval_seqlen=32, eval_max_windows=2)
    events: list = []
    res = run_to_completion(iter_job(recipe), events.append)
    phases = [e.phase for e in events if isinstance(e, PhaseStarted)]
    assert phases.count("ppl-dense") == 1 and phases.count("ppl-pruned") == 1  # one set measured
    assert res.report["eval"] == {"ppl_source": "first.txt", "seqlen": 32, "max_windows": 2}
    assert res.report["ppl_dense"] > 1 and res.report["ppl_pruned"] > 1
    warnings = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
    assert any("not evaluated: second.txt" in w for w in warnings), warnings
    assert res.report["recipe"]["eval_ppl"] == ["first.txt", "second.txt"]  # the recipe as given
    assert str(private) not in json.dumps(res.report)


def test_the_eval_section_follows_what_was_measured(private, pruned):
    loaded, result = pruned
    es = EvalSettings(str(private / "second.txt"), 64, 3)
    recipe = Recipe(model=str(private / "tiny-llama"), prune=PruneConfig(method="magnitude"),
                    eval_ppl=(str(private / "first.txt"),), eval_seqlen=16)

    def section(ppl_dense, ppl_pruned, evaluation=es, include_paths=False):
        return build_report(loaded, recipe, None, result, ppl_dense, ppl_pruned, {}, include_paths,
                            evaluation)["eval"]

    assert section(None, 7.0) == {"ppl_source": "second.txt", "seqlen": 64, "max_windows": 3}
    assert section(6.0, None)["ppl_source"] == "second.txt"
    assert section(None, None) == {"ppl_source": None, "seqlen": 64, "max_windows": 3}
    assert section(None, None, evaluation=None) == {"ppl_source": None, "seqlen": 16, "max_windows": None}
    assert section(6.0, 7.0, include_paths=True)["ppl_source"] == str(private / "second.txt")


def test_dense_report_and_measurements(private, pruned):
    loaded, _ = pruned
    rep = dense_report(loaded, Recipe(model=str(private / "tiny-llama"), dtype="fp32"))
    assert (rep["method"], rep["global_sparsity"], rep["ppl_pruned"]) == ("dense", 0.0, None)
    assert rep["recipe"] == {"model": "tiny-llama", "dtype": "fp32"} and rep["model"]["name"] == "tiny-llama"
    assert "blocks_path" not in rep["model"] and str(private) not in json.dumps(rep)

    add_perplexities(rep, {"wikitext2": 9.0, "c4": 11.0})
    assert rep["ppl"] == {"wikitext2": 9.0, "c4": 11.0} and rep["ppl_pruned"] == 9.0  # the first set's
    rep["eval"] = suite_eval(("wikitext2", "c4"), 128, None, {"wikitext2": 5, "c4": 4}, ("piqa",), 10)
    assert rep["eval"] == {"ppl_sources": ["wikitext2", "c4"], "seqlen": 128, "max_windows": None,
                           "windows": {"wikitext2": 5, "c4": 4}, "tasks": ["piqa"], "limit": 10}
    add_zeroshot(rep, {"piqa": TaskResult("piqa", 0.5, 0.6, 10), "arc_easy": TaskResult("arc_easy", 0.25, 0.25, 8)})
    assert rep["tasks"]["piqa"] == {"acc": 0.5, "acc_norm": 0.6, "n": 10}
    assert rep["tasks_mean_acc"] == pytest.approx(0.375)
    add_zeroshot(rep, {})
    assert rep["tasks"] == {} and rep["tasks_mean_acc"] is None

    ev = eval_report(str(private / "tiny-llama"), 128)
    assert (ev["format"], ev["model"], ev["seqlen"], ev["ppl"]) == ("prunestudio-eval", "tiny-llama", 128, {})
