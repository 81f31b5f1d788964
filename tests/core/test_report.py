"""Reports (core/run/report.py): a run's names exactly what was evaluated; the dense baseline's,
the plain evaluation's and their measurements; no private path in any of them."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import CORPUS, tiny_model
from prunestudio.core.config import PruneConfig, Recipe
from prunestudio.core.evaluate.zeroshot import TaskResult
from prunestudio.core.events import Message, PhaseStarted, run_to_completion
from prunestudio.core.prune.pipeline import iter_prune
from prunestudio.core.run.evaluation import EvalSettings
from prunestudio.core.run.export import model_card
from prunestudio.core.run.history import History
from prunestudio.core.run.job import iter_job
from prunestudio.core.run.load import LoadArgs, iter_load
from prunestudio.core.run.report import (
    add_perplexities,
    add_zeroshot,
    build_report,
    dense_report,
    eval_report,
    base_model,
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
    assert res.report["eval"] == {"ppl_source": "first.txt", "seqlen": 32, "windows": 2, "max_windows": 2}
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

    def section(ppl_dense, ppl_pruned, evaluation=es, include_paths=False, windows=None):
        return build_report(loaded, recipe, None, result, ppl_dense, ppl_pruned, {}, include_paths,
                            evaluation, windows).get("eval")

    assert section(None, 7.0, windows=3) == {"ppl_source": "second.txt", "seqlen": 64, "windows": 3, "max_windows": 3}
    assert section(None, 7.0) == {"ppl_source": "second.txt", "seqlen": 64, "max_windows": 3}  # count unknown
    assert section(6.0, None, evaluation=EvalSettings("wikitext2", 64), windows=5) == {
        "ppl_source": "wikitext2", "seqlen": 64, "windows": 5}  # no limit asked: none written
    assert section(None, None) is None  # nothing measured: no section at all
    assert section(None, None, evaluation=None) is None
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
    assert rep["eval"] == {"ppl_sources": ["wikitext2", "c4"], "seqlen": 128,
                           "windows": {"wikitext2": 5, "c4": 4}, "tasks": ["piqa"], "limit": 10}
    assert suite_eval(("c4",), 64, 3, {"c4": 3}, (), 10) == {  # nothing empty: no tasks, no task limit
        "ppl_sources": ["c4"], "seqlen": 64, "windows": {"c4": 3}, "max_windows": 3}
    add_zeroshot(rep, {"piqa": TaskResult("piqa", 0.5, 0.6, 10), "arc_easy": TaskResult("arc_easy", 0.25, 0.25, 8)})
    assert rep["tasks"]["piqa"] == {"acc": 0.5, "acc_norm": 0.6, "n": 10}
    assert rep["tasks_mean_acc"] == pytest.approx(0.375)
    add_zeroshot(rep, {})
    assert rep["tasks"] == {} and rep["tasks_mean_acc"] is None

    ev = eval_report(str(private / "tiny-llama"), 128)
    assert (ev["format"], ev["model"], ev["seqlen"], ev["ppl"]) == ("prunestudio-eval", "tiny-llama", 128, {})


def test_a_run_says_how_many_windows_it_read_in_report_card_and_history(private, tmp_path):
    """A limit above what the text holds: the report, card and history give the windows actually
    read (counted by the perplexity loop itself), the text's public name and the window length."""
    recipe = Recipe(model=str(private / "tiny-llama"), device="cpu", dtype="fp32",
                    prune=PruneConfig(method="magnitude"), eval_ppl=(str(private / "first.txt"),),
                    eval_seqlen=128, eval_max_windows=1000)
    events: list = []
    res = run_to_completion(iter_job(recipe, tmp_path / "out"), events.append)
    read = {e.phase: e.total for e in events if isinstance(e, PhaseStarted) and e.phase.startswith("ppl-")}
    n = read["ppl-pruned"]
    assert read["ppl-dense"] == n and 2 < n < 1000
    assert res.report["eval"] == {"ppl_source": "first.txt", "seqlen": 128, "windows": n, "max_windows": 1000}

    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert f"Perplexity on first.txt, {n} windows of 128 tokens: dense " in card
    assert "n/a" not in card and str(private) not in card

    row = History(tmp_path / "h.sqlite3").get(History(tmp_path / "h.sqlite3").add(res.report))
    assert (row.ppl_text, row.ppl_seqlen, row.ppl_windows) == ("first.txt", 128, n)
    assert row.measured_on() == f"first.txt, {n} x 128 tokens"


def test_history_rows_of_experiment_cells_and_unmeasured_runs(tmp_path):
    h = History(tmp_path / "h.sqlite3")
    cell = {"method": "wanda", "ppl_pruned": 9.0, "eval": suite_eval(("wikitext2", "c4"), 256, None,
                                                                      {"wikitext2": 7, "c4": 5}, (), None)}
    row = h.get(h.add(cell))
    assert (row.ppl_text, row.ppl_seqlen, row.ppl_windows) == ("wikitext2", 256, 7)  # ppl_pruned's set
    plain = h.get(h.add({"method": "magnitude"}))
    assert (plain.ppl_text, plain.ppl_windows, plain.measured_on()) == (None, None, "")
    h.update(plain.id, {"method": "magnitude", "ppl_pruned": 8.0,
                        "eval": {"ppl_source": "a.txt", "seqlen": 64, "windows": 3}})
    assert h.get(plain.id).measured_on() == "a.txt, 3 x 64 tokens"


def _empty_values(obj, where=""):
    """Paths of the empty objects and lists anywhere in ``obj``."""
    if isinstance(obj, (dict, list)) and not obj:
        return [where]
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    return [p for k, v in items for p in _empty_values(v, f"{where}.{k}")]


def test_no_empty_placeholders(private, pruned):
    loaded, result = pruned
    recipe = Recipe(model=str(private / "tiny-llama"), prune=PruneConfig(method="magnitude"))
    rep = build_report(loaded, recipe, None, result, None, None, {})
    assert result.module_info and not any(result.module_info.values())  # magnitude says nothing per module
    assert [k for k in ("module_info", "owl", "notes", "eval") if k in rep] == [], {k: rep.get(k) for k in ("module_info", "owl", "notes", "eval")}
    assert _empty_values({k: v for k, v in rep.items() if k != "recipe"}) == []  # the recipe is kept as given

    said = dataclasses.replace(result, module_info={**result.module_info, "0.mlp.up_proj": {"swaps": 3}},
                               notes=["one note"])
    rep = build_report(loaded, recipe, None, said, None, None, {})
    assert rep["module_info"] == {"0.mlp.up_proj": {"swaps": 3}} and rep["notes"] == ["one note"]
    assert "Note: one note" in model_card(rep)
    assert "Calibration: none (magnitude uses no calibration data)." in model_card(rep)


def _folder(tmp_path, name, config):
    d = tmp_path / name
    d.mkdir()
    if config is not None:
        (d / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return d


def test_base_model_is_the_hub_id_when_known(private, pruned, tmp_path):
    loaded, result = pruned
    recipe = Recipe(model=str(private / "tiny-llama"), prune=PruneConfig(method="magnitude"))

    def report_of(**changes):
        return build_report(dataclasses.replace(loaded, **changes), recipe, None, result, None, None, {})

    # loaded by its hub id: the id itself, in the report and in the card's metadata
    hub = report_of(spec="HuggingFaceTB/SmolLM2-135M", name="HuggingFaceTB/SmolLM2-135M",
                    path=_folder(tmp_path, "snapshot", {"model_type": "llama"}))
    assert hub["model"]["base_model"] == "HuggingFaceTB/SmolLM2-135M"
    assert model_card(hub).startswith("---\nbase_model: HuggingFaceTB/SmolLM2-135M\n")

    # a plain local folder (the saved tiny model records no hub id): no base_model anywhere
    plain = report_of()
    assert "base_model" not in plain["model"] and "base_model" not in model_card(plain)

    # a local folder whose config names the model it was saved from
    named = _folder(tmp_path, "copy", {"_name_or_path": "Qwen/Qwen2.5-0.5B", "model_type": "qwen2"})
    assert base_model(dataclasses.replace(loaded, spec=str(named), name="copy", path=named)) == "Qwen/Qwen2.5-0.5B"
    for recorded in ("/home/me/models/llama", "./llama", "llama", ""):
        d = _folder(tmp_path, f"local{len(recorded)}", {"_name_or_path": recorded})
        assert base_model(dataclasses.replace(loaded, spec=str(d), name=d.name, path=d)) is None, recorded
    # a catalogue model: its entry's hub id (the converted cache folder records none)
    assert base_model(dataclasses.replace(loaded, spec="demo", name="demo (SmolLM2-135M-Instruct)")) \
        == "HuggingFaceTB/SmolLM2-135M-Instruct"
    gguf = _folder(tmp_path, "gguf", None)  # no config.json beside a GGUF file
    assert base_model(dataclasses.replace(loaded, spec=str(gguf / "m.gguf"), name="m.gguf", path=gguf)) is None
