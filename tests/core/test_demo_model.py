"""A few tests on the real default model (SmolLM2-135M-Instruct from its GGUF package)."""

from __future__ import annotations

import json

import pytest
import torch
from prunestudio.core.config import CalibConfig, PruneConfig, Recipe
from prunestudio.core.evaluate.perplexity import perplexity
from prunestudio.core.events import run_to_completion
from prunestudio.core.run.job import iter_job
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.slow


def test_demo_model_is_a_plain_llama(demo_loaded):
    info = demo_loaded.info
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["blocks"] == 30
    assert info["modules_per_block"] == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                         "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert getattr(demo_loaded.model, "hf_quantizer", None) is None
    ids = demo_loaded.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = demo_loaded.model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in demo_loaded.tokenizer.decode(out[0])


@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_prune_export_reload_reproduces_perplexity(shared_data, demo_loaded, tmp_path, structure):
    wiki = str(shared_data / "wikitext-2" / "wiki.test.raw")
    c4 = str(shared_data / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl.gz")
    recipe = Recipe(model="demo", device="cpu", dtype="fp32",
                    prune=PruneConfig(method="wanda", sparsity=0.5, structure=structure, batch_size=4),
                    calibration=CalibConfig(source=c4, nsamples=8, seqlen=128),
                    eval_ppl=(wiki,), eval_max_windows=4)
    res = run_to_completion(iter_job(recipe, tmp_path / "out"))
    r = res.report
    assert r["global_sparsity"] == pytest.approx(0.5)
    assert r["ppl_pruned"] > r["ppl_dense"] > 1
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    # read through the Llama's own attributes; the dense weights are the same model loaded again
    for layer, dense_layer in zip(back.model.layers, demo_loaded.model.model.layers, strict=True):
        for part, names in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                            ("mlp", ("gate_proj", "up_proj", "down_proj"))):
            for name in names:
                w = getattr(getattr(layer, part), name).weight.detach()
                dense = getattr(getattr(dense_layer, part), name).weight.detach()
                kept = w != 0
                assert torch.equal(w[kept], dense[kept]), name  # Wanda only removes
                if structure == "2:4":
                    # exactly 2 zeros per group of 4, more only where the dense group had more
                    # (a zero weight scores 0, so it is removed first)
                    was = (dense == 0).reshape(w.shape[0], -1, 4).sum(-1)
                    assert torch.equal((w == 0).reshape(w.shape[0], -1, 4).sum(-1), was.clamp(min=2)), name
                else:
                    assert torch.all((w == 0).sum(1) == w.shape[1] // 2)
    ppl = perplexity(back, res.loaded.tokenizer, wiki, 128, max_windows=4)
    assert ppl == pytest.approx(r["ppl_pruned"], rel=1e-4)
    saved = json.loads((tmp_path / "out" / "prunestudio.json").read_text())
    assert saved["calibration"]["sha256"] == res.calibration.sha256()
    assert str(tmp_path) not in (tmp_path / "out" / "prunestudio.json").read_text()
