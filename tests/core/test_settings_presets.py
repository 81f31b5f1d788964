"""Settings presets (core/config.py SETTINGS_PRESETS; CLI --preset, the app's File > Settings
preset): the paper preset gives the papers' sizes, the cpu preset the defaults, flags override."""

from __future__ import annotations

import bz2
import json

import pytest
from prunestudio.core.cli.commands import _recipe_from_args, build_parser
from prunestudio.core.config import CalibConfig, PruneConfig, Recipe, settings_preset
from prunestudio.core.errors import ConfigError
from prunestudio.core.evaluate import task_data
from prunestudio.core.run.evaluation import EvalSettings


def test_paper_preset_gives_the_papers_sizes():
    base = Recipe(prune=PruneConfig(method="sparsegpt", sparsity=0.6), calibration=CalibConfig(source="c4"))
    r = settings_preset("paper").apply(base)
    cal = r.calibration
    assert (cal.nsamples, cal.seqlen, cal.mode) == (128, 2048, "document")
    assert cal.source == "c4" and r.prune == base.prune  # sizes only
    es = EvalSettings.of_recipe(r)
    assert (es.source, es.seqlen, es.max_windows) == ("wikitext2", 2048, None)
    p = settings_preset("paper")
    assert p.zeroshot_limit is None and p.zeroshot_full
    # a perplexity set the recipe names is kept
    mine = settings_preset("paper").apply(Recipe(eval_ppl=("my.txt",)))
    assert mine.eval_ppl == ("my.txt",) and EvalSettings.of_recipe(mine).seqlen == 2048


def test_cpu_preset_is_the_defaults():
    r = settings_preset("cpu").apply(settings_preset("paper").apply(Recipe()))
    assert (r.calibration.nsamples, r.calibration.seqlen, r.calibration.mode) == (64, 512, "random")
    assert r.calibration == Recipe().calibration
    assert r.eval_seqlen is None and r.eval_max_windows is None
    assert settings_preset("cpu").zeroshot_limit == 100 and not settings_preset("cpu").zeroshot_full


def test_unknown_preset_is_one_sentence():
    with pytest.raises(ConfigError, match="Unknown settings preset 'huge'"):
        settings_preset("huge")


def test_cli_preset_then_flags_override():
    p = build_parser()
    r = _recipe_from_args(p.parse_args(["prune", "--model", "demo", "--preset", "paper"]))
    assert (r.calibration.nsamples, r.calibration.seqlen, r.calibration.mode, r.eval_seqlen) == (128, 2048, "document",
                                                                                                   2048)
    r = _recipe_from_args(p.parse_args(["prune", "--model", "demo", "--preset", "paper", "--nsamples", "8",
                                        "--sampling", "random", "--eval-seqlen", "1024"]))
    assert (r.calibration.nsamples, r.calibration.seqlen, r.calibration.mode, r.eval_seqlen) == (8, 2048, "random",
                                                                                                   1024)
    r = _recipe_from_args(p.parse_args(["prune", "--model", "demo", "--calibration", "selfgen:c4",
                                        "--selfgen-protocol", "paper"]))
    assert r.calibration.protocol == "paper"
    with pytest.raises(ConfigError, match="prefix source"):
        _recipe_from_args(p.parse_args(["prune", "--model", "demo", "--selfgen-protocol", "paper"]))


def test_whole_task_sets_never_read_the_hellaswag_subset(tmp_path):
    folder = tmp_path / "hellaswag"
    folder.mkdir()
    with open(folder / "hellaswag_val_subset1000.jsonl", "w") as f:
        f.write(json.dumps({"ctx": "a context", "endings": ["a", "b", "c", "d"], "label": 0}) + "\n")
    assert task_data.find_task_file("hellaswag", tmp_path).name == "hellaswag_val_subset1000.jsonl"
    with pytest.raises(Exception, match="No data for the zero-shot task 'hellaswag'"):
        task_data.find_task_file("hellaswag", tmp_path, full=True)
    with bz2.open(folder / "hellaswag_val_full.txt.bz2", "wt") as f:
        f.write("")
    assert task_data.find_task_file("hellaswag", tmp_path, full=True).name == "hellaswag_val_full.txt.bz2"
    assert task_data.find_task_file("hellaswag", tmp_path).name == "hellaswag_val_subset1000.jsonl"


def test_whole_hellaswag_from_the_shared_data():
    from conftest import require_shared_data

    d = require_shared_data("eval/hellaswag")
    assert len(task_data.load_task("hellaswag", d.parent)) == 1000  # the subset, by default
    assert len(task_data.load_task("hellaswag", d.parent, full=True)) == 10042  # the papers' whole set


def test_a_grid_source_can_name_its_self_generation_protocol(tmp_path):
    from prunestudio.core.experiment import GridSpec

    d = {"name": "g", "model": "demo", "methods": ["wanda"], "sparsities": [0.5], "seeds": [0],
         "dense_baseline": False,
         "sources": ["selfgen", {"label": "paper", "source": "selfgen:c4", "protocol": "paper"}],
         "eval": {"ppl": ["wikitext2"]}}
    cells = GridSpec.from_dict(d, tmp_path).cells()
    by = {c.source_label: c for c in cells}
    assert by["selfgen"].recipe.calibration.protocol == "windows"
    assert by["paper"].recipe.calibration.protocol == "paper"
    # the protocol is part of what a cell is: the same source without it is another cell
    plain = GridSpec.from_dict({**d, "sources": [{"label": "paper", "source": "selfgen:c4"}]}, tmp_path).cells()
    assert plain[0].key != by["paper"].key
    with pytest.raises(ConfigError, match="prefix source"):
        GridSpec.from_dict({**d, "sources": [{"source": "selfgen", "protocol": "paper"}]}, tmp_path).cells()


def test_readme_table_of_defaults_says_what_the_code_does():
    """The README's "Defaults that differ from the papers" names the defaults the code has."""
    from pathlib import Path

    import torch
    from prunestudio.core.model.devices import resolve_dtype
    from prunestudio.core.run.calibration import _n_before_filter

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Defaults that differ from the papers", 1)[1].split("\n## ", 1)[0]
    cal = CalibConfig()
    assert (cal.nsamples, cal.seqlen, cal.source, cal.protocol, cal.mode) == (64, 512, "selfgen", "windows", "random")
    assert "| 64 windows x 512 tokens" in table and "| `selfgen`: zero-data" in table
    assert f"({_n_before_filter(64, 0.2)} written for 64 kept)" in table
    assert "| `random`: documents joined" in table
    assert Recipe().eval_seqlen is None and "a run: the calibration's length" in table
    assert build_parser().parse_args(["eval", "--model", "x", "--preset", "paper"]).preset == "paper"
    assert PruneConfig(method="sparsegpt").passes_once and not PruneConfig(method="wanda").passes_once
    assert "| one pass per block" in table and "Wanda and magnitude keep the reference's two passes" in table
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32 and "float32 on the CPU" in table
    assert "`hellaswag_val_subset1000.jsonl`" in table and "hellaswag_val_subset1000.jsonl" in task_data.SUBSET_FILES
