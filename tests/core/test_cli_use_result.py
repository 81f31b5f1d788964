"""`prunestudio prune --ollama-modelfile --card-samples N`: the Modelfile and the `ollama create`
command after the export; dense and pruned samples in the report and the model card."""

from __future__ import annotations

import json
import shlex

import torch
from conftest import CORPUS, byte_tokenizer, tiny_model
from prunestudio.core.cli.commands import main
from prunestudio.core.evaluate.samples import DEFAULT_PROMPTS


def _greedy(model, tok, prompt, n=64):
    """Greedy continuation with full forward passes, written here independently."""
    ids = list(tok(prompt)["input_ids"])
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            seq.append(nxt)
            if nxt == tok.eos_token_id:
                break
    return tok.decode(seq[len(ids):], skip_special_tokens=True)


def test_prune_writes_the_modelfile_prints_the_command_and_puts_samples_in_the_card(capsys, tmp_path):
    tok = byte_tokenizer(300)
    model_dir = tmp_path / "tiny-llama"
    dense = tiny_model("llama", vocab_size=len(tok))
    dense.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    calib = tmp_path / "calib.txt"
    calib.write_text((CORPUS + "\n") * 30, encoding="utf-8")
    out = tmp_path / "pruned"
    code = main(["prune", "--model", str(model_dir), "--method", "magnitude", "--device", "cpu", "--dtype", "fp32",
                 "--out", str(out), "--ollama-modelfile", "--card-samples", "2"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    lines = cap.out.strip().splitlines()
    assert lines[0] == str(out)
    assert shlex.split(lines[1]) == ["ollama", "create", "pruned", "-f", str(out / "Modelfile")]
    assert "\nFROM .\n" in (out / "Modelfile").read_text()

    report = json.loads((out / "prunestudio.json").read_text())
    pairs = report["samples"]["pairs"]
    assert [p["prompt"] for p in pairs] == list(DEFAULT_PROMPTS[:2])
    assert pairs[0]["dense"] == _greedy(dense, tok, DEFAULT_PROMPTS[0])  # the model before pruning
    from transformers import AutoModelForCausalLM

    pruned = AutoModelForCausalLM.from_pretrained(out)
    assert pairs[1]["pruned"] == _greedy(pruned, tok, DEFAULT_PROMPTS[1])  # the exported pruned model
    card = (out / "README.md").read_text()
    assert "## Samples: dense and pruned" in card and "greedy, up to 64 new tokens" in card


def test_ollama_modelfile_needs_an_export_folder(capsys, tmp_path):
    code = main(["prune", "--model", str(tmp_path), "--method", "magnitude", "--ollama-modelfile"])
    err = capsys.readouterr().err
    assert code != 0
    assert any(ln.startswith("error:") and "--out" in ln for ln in err.splitlines()), err
