"""The dense-perplexity cache: hit for the same weights and text, miss for anything else."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CORPUS, byte_tokenizer, tiny_model
from prunestudio.core.config import CalibConfig, PruneConfig, Recipe
from prunestudio.core.evaluate import ppl_cache
from prunestudio.core.events import Message, PhaseStarted, run_to_completion
from prunestudio.core.run.job import iter_job


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = byte_tokenizer()
    d = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_model("llama", vocab_size=len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture()
def recipe(model_dir, tmp_path):
    (tmp_path / "eval.txt").write_text((CORPUS + "\n") * 10)
    (tmp_path / "calib.txt").write_text((CORPUS + "\n") * 10)
    return Recipe(model=str(model_dir), device="cpu", dtype="fp32", prune=PruneConfig(method="wanda"),
                  calibration=CalibConfig(source=str(tmp_path / "calib.txt"), nsamples=2, seqlen=12),
                  eval_ppl=(str(tmp_path / "eval.txt"),), eval_max_windows=3)


def _run(recipe):
    events = []
    res = run_to_completion(iter_job(recipe), events.append)
    phases = [e.phase for e in events if isinstance(e, PhaseStarted)]
    cached = any(isinstance(e, Message) and "not evaluated again" in e.text for e in events)
    return res.report, phases, cached


def test_second_job_reuses_the_dense_perplexity(recipe):
    first, phases1, cached1 = _run(recipe)
    second, phases2, cached2 = _run(recipe)
    assert not cached1 and "ppl-dense" in phases1
    assert cached2 and "ppl-dense" not in phases2 and "ppl-pruned" in phases2
    assert second["ppl_dense"] == first["ppl_dense"]
    assert second["ppl_pruned"] == pytest.approx(first["ppl_pruned"])


def test_other_text_or_windows_miss(recipe, tmp_path):
    from dataclasses import replace

    _run(recipe)
    _, _, cached = _run(replace(recipe, eval_max_windows=2))
    assert not cached
    (tmp_path / "other.txt").write_text((CORPUS[::-1] + "\n") * 10)
    _, _, cached = _run(replace(recipe, eval_ppl=(str(tmp_path / "other.txt"),)))
    assert not cached


def test_signature_changes_when_weights_change(make_model):
    model = make_model("llama")
    before = ppl_cache.weights_signature(model)
    assert ppl_cache.weights_signature(make_model("llama")) == before
    with torch.no_grad():
        w = model.model.layers[1].mlp.down_proj.weight
        w[:, ::2] = 0  # what pruning does
    assert ppl_cache.weights_signature(model) != before


def test_corrupt_or_disabled_cache_is_ignored(recipe, tmp_path, monkeypatch):
    path = tmp_path / "cache.json"
    monkeypatch.setenv("PRUNESTUDIO_PPL_CACHE", str(path))
    path.write_bytes(b"\x00not json")
    report, _, cached = _run(recipe)
    assert not cached and report["ppl_dense"] > 1
    assert len(json.loads(path.read_text())) == 1  # rewritten whole
    monkeypatch.setenv("PRUNESTUDIO_PPL_CACHE", "off")
    _, _, cached = _run(recipe)
    assert not cached
