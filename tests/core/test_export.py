"""Export: atomic, loads back with plain transformers, same logits and sparsity."""

from __future__ import annotations

import json
import os

import pytest
import torch
from prunestudio.core.config import PruneConfig
from prunestudio.core.errors import Cancelled, ExportError
from prunestudio.core.events import run_to_completion
from prunestudio.core.model import architecture
from prunestudio.core.prune.pipeline import iter_prune
from prunestudio.core.run.export import REPORT_NAME, iter_export, model_card
from transformers import AutoModelForCausalLM


def _prune(model, tokenizer, structure="unstructured"):
    ids = torch.randint(3, len(tokenizer), (4, 24), generator=torch.Generator().manual_seed(0))
    return run_to_completion(iter_prune(model, ids, PruneConfig(method="wanda", structure=structure)))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_round_trip_same_logits_same_sparsity(make_model, tokenizer, tmp_path, arch):
    model = make_model(arch)
    res = _prune(model, tokenizer)
    out = run_to_completion(iter_export(model, tokenizer, tmp_path / "pruned", res.to_dict()))
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors")
    assert not list(out.glob("*.bin"))
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(3, len(tokenizer), (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits)
    lay = architecture.layout(back)
    for layer in res.layers:
        for name, s in layer["modules"].items():
            w = architecture.get_weight_2d(lay.blocks[layer["index"]].get_submodule(name))
            assert (w == 0).float().mean().item() == pytest.approx(s)
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["global_sparsity"] == res.global_sparsity
    assert "as large as the original model" in (out / "README.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_existing_folder_is_left_untouched(make_model, tokenizer, tmp_path):
    model = make_model()
    res = _prune(model, tokenizer)
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        run_to_completion(iter_export(model, tokenizer, target, res.to_dict()))
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_cancel_leaves_nothing(make_model, tokenizer, tmp_path):
    model = make_model()
    res = _prune(model, tokenizer)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 1  # after the weights are written

    with pytest.raises(Cancelled):
        run_to_completion(iter_export(model, tokenizer, tmp_path / "x", res.to_dict(), should_stop=stop))
    assert list(tmp_path.iterdir()) == []


def test_disk_error_leaves_no_partial_export(make_model, tokenizer, tmp_path, monkeypatch):
    model = make_model()
    res = _prune(model, tokenizer)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tokenizer, "save_pretrained", full)
    with pytest.raises(ExportError, match="disk is full"):
        run_to_completion(iter_export(model, tokenizer, tmp_path / "x", res.to_dict()))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder(make_model, tokenizer, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    model = make_model()
    res = _prune(model, tokenizer)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(ExportError):
        run_to_completion(iter_export(model, tokenizer, ro / "x", res.to_dict()))


def test_incomplete_model_is_not_exported(make_model, tokenizer, tmp_path):
    model = make_model()
    ids = torch.randint(3, len(tokenizer), (4, 24))
    gen = iter_prune(model, ids, PruneConfig(method="wanda"), should_stop=lambda: True)
    with pytest.raises(Cancelled):
        run_to_completion(gen)
    with pytest.raises(ExportError, match="partly pruned"):
        run_to_completion(iter_export(model, tokenizer, tmp_path / "x", {}))
    assert list(tmp_path.iterdir()) == []


def _card_report(**extra):
    return {"model": {"name": "tiny"}, "method": "wanda", "structure": "unstructured", "sparsity_target": 0.5,
            "global_sparsity": 0.5, "calibration": {"source": "c4", "nsamples": 8, "seqlen": 32, "seed": 0,
                                                    "sha256": "ab" * 32}, **extra}


def test_the_card_says_what_each_perplexity_was_measured_on():
    ev = {"ppl_source": "wiki.test.raw", "seqlen": 512, "windows": 32}
    both = model_card(_card_report(ppl_dense=20.0, ppl_pruned=25.0, eval=ev))
    assert "Perplexity on wiki.test.raw, 32 windows of 512 tokens: dense 20.000, pruned 25.000 (+25.0 %" in both
    pruned_only = model_card(_card_report(ppl_dense=None, ppl_pruned=65.704, eval=ev))
    assert ("Perplexity on wiki.test.raw, 32 windows of 512 tokens: pruned 65.704 (lower is better); "
            "the dense model was not measured.") in pruned_only
    assert "n/a" not in pruned_only
    one = model_card(_card_report(ppl_dense=3.0, ppl_pruned=None, eval={**ev, "windows": 1}))
    assert "wiki.test.raw, 1 window of 512 tokens: dense 3.000; the pruned model was not measured." in one
    assert "Perplexity" not in model_card(_card_report(ppl_dense=None, ppl_pruned=None))


@pytest.mark.parametrize("structure", ["unstructured", "2:4", "4:8"])
def test_the_speed_note_claims_no_speed_up(structure):
    card = model_card(_card_report(structure=structure))
    for runtime in ("llama.cpp / Ollama", "vLLM", "TensorRT-LLM", "PyTorch"):
        assert f"**{runtime}" in card, runtime
    assert "sparse tensor cores for 2:4 models" not in card  # the old promise
    assert "same speed" in card and "Quantization" in card and "structured pruning" in card
    assert ("speed-up there, 2:4 included." in card) == (structure == "2:4")
    assert ("other than 2:4 is not accelerated" in card) == (structure == "4:8")
    assert ("unstructured zeros are not accelerated" in card) == (structure == "unstructured")
