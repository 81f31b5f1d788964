"""The command line answers every bad input with one ``error: ...`` line and a non-zero exit.

``main([...])`` runs in-process; stderr is checked through capsys. Exit status: 0 done, 1 an error
the user can fix, 2 an unexpected failure (a bug), 130 cancelled.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from conftest import CORPUS, byte_tokenizer, tiny_model
from prunestudio.core.calib.calibset import CalibrationSet, CalibSample, tokenizer_fingerprint
from prunestudio.core.cli.commands import EXIT_CANCELLED, EXIT_ERROR, EXIT_UNEXPECTED, main


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer(300)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("cli-models") / "tiny-llama"
    tiny_model("llama", vocab_size=len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def model(saved_model, tmp_path):
    """A private copy of the saved tiny model, free to damage."""
    d = tmp_path / "model"
    shutil.copytree(saved_model, d)
    return d


@pytest.fixture
def text(tmp_path):
    p = tmp_path / "calib.txt"
    p.write_text((CORPUS + "\n") * 30, encoding="utf-8")
    return p


def _prune_args(model, calib, *extra, out=None):
    args = ["prune", "--model", str(model), "--method", "wanda", "--calibration", str(calib),
            "--nsamples", "2", "--seqlen", "16", "--device", "cpu", "--dtype", "fp32", *extra]
    if out is not None:
        args += ["--out", str(out)]
    return args


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def error_line(err: str) -> str:
    """The single ``error:`` line; never a traceback."""
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def test_a_good_run_exits_0(capsys, model, text, tmp_path):
    out = tmp_path / "pruned"
    code, stdout, err = run(capsys, *_prune_args(model, text, out=out))
    assert code == 0, err
    assert stdout.strip() == str(out)
    assert (out / "model.safetensors").exists()
    assert "error:" not in err


def test_the_summary_says_what_the_perplexities_were_measured_on(capsys, model, text, tmp_path):
    code, _, err = run(capsys, *_prune_args(model, text, "--eval-ppl", text, "--eval-seqlen", "16",
                                            "--eval-max-windows", "3"))
    assert code == 0, err
    summary = next(ln for ln in err.splitlines() if "global sparsity" in ln and "->" in ln)
    assert re.search(r"perplexity \d+\.\d{3} -> \d+\.\d{3} \(calib\.txt, 3 windows of 16 tokens\)", summary), summary

    code, stdout, err = run(capsys, "eval", "--model", model, "--ppl", text, "--seqlen", "16", "--max-windows", "3",
                            "--device", "cpu")
    assert code == 0, err
    assert re.search(r"perplexity calib\.txt: \d+\.\d{3} \(3 windows of 16 tokens\)", err), err
    printed = json.loads(stdout)
    assert printed["ppl"].keys() == {"calib.txt"} and printed["windows"] == {"calib.txt": 3}


# ---- models -----------------------------------------------------------------------------------

def _no_config(model):
    (model / "config.json").unlink()


def _truncate(model):
    f = model / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])


def _bogus(model):
    cfg = json.loads((model / "config.json").read_text())
    cfg["model_type"] = "bogus"
    (model / "config.json").write_text(json.dumps(cfg))


def _remote(model):
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(model_type="mycustom", auto_map={"AutoConfig": "configuration_my.C",
                                                 "AutoModelForCausalLM": "modeling_my.M"})
    (model / "config.json").write_text(json.dumps(cfg))


class _NotATensor:
    pass


def _pickled_object(model):
    (model / "model.safetensors").unlink()
    state = tiny_model("llama", vocab_size=300).state_dict()
    state["extra"] = _NotATensor()
    torch.save(state, model / "pytorch_model.bin")


@pytest.mark.parametrize("damage, expected", [
    (None, "Model not found"),
    (_no_config, "has no config.json"),
    (_truncate, "model.safetensors is truncated or corrupt"),
    (_bogus, "has the architecture 'bogus', which this installation of transformers"),
    (_remote, "--trust-remote-code"),
    (_pickled_object, "refused for safety (torch.load with weights_only=True failed)"),
])
def test_bad_models(capsys, model, text, tmp_path, damage, expected):
    target = model if damage is not None else tmp_path / "missing-model"
    if damage is not None:
        damage(model)
    code, _, err = run(capsys, *_prune_args(target, text, out=tmp_path / "out"))
    assert code == EXIT_ERROR
    assert expected in error_line(err)
    assert not (tmp_path / "out").exists()


def test_gguf_of_an_unsupported_architecture(capsys, tmp_path, text):
    import gguf
    import numpy as np

    p = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(p), "bogusarch")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    code, _, err = run(capsys, *_prune_args(p, text))
    assert code == EXIT_ERROR
    assert "cannot read GGUF models of the 'bogusarch' architecture" in error_line(err)


def test_expected_error_hints_at_verbose_and_verbose_shows_details(capsys, model, text):
    _truncate(model)
    code, _, err = run(capsys, *_prune_args(model, text))
    assert code == EXIT_ERROR and error_line(err).endswith("(rerun with -v for details)")
    code, _, err = run(capsys, "-v", *_prune_args(model, text))
    assert code == EXIT_ERROR
    assert "Traceback" in err and "rerun with -v" not in err


def test_errors_are_shown_even_when_quiet(capsys, tmp_path, text):
    code, _, err = run(capsys, "-q", *_prune_args(tmp_path / "missing", text))
    assert code == EXIT_ERROR
    assert err.strip().startswith("error: Model not found")


# ---- calibration ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, data, expected", [
    ("empty.txt", b"", "empty.txt is empty."),
    ("blob.txt", bytes(range(256)) * 8, "blob.txt looks like a binary file"),
    ("latin1.txt", ("Café crème " * 50 + "\n").encode("latin-1"), "latin1.txt is not UTF-8 text"),
    ("broken.jsonl", b"{oops\n[1]\n{\"id\": 3}\n", "broken.jsonl: no line holds a JSON object with a text field"),
    ("short.txt", b"just a few words\n", "Possible:"),
])
def test_bad_calibration_files(capsys, model, tmp_path, name, data, expected):
    p = tmp_path / name
    p.write_bytes(data)
    code, _, err = run(capsys, *_prune_args(model, p, out=tmp_path / "out"))
    assert code == EXIT_ERROR
    assert expected in error_line(err)
    assert not (tmp_path / "out").exists()


def test_jsonl_with_some_broken_lines_warns_and_goes_on(capsys, model, tmp_path):
    p = tmp_path / "mixed.jsonl"
    good = json.dumps({"text": CORPUS * 3})
    p.write_text("\n".join([good, "{broken", good, good, "[]"] + [good] * 5) + "\n")
    code, _, err = run(capsys, *_prune_args(model, p))
    assert code == 0, err
    assert "warning: mixed.jsonl: skipped 2 broken or text-less lines (2, 5)." in err


def test_saved_set_of_another_tokenizer(capsys, model, tmp_path):
    other = byte_tokenizer(280)
    cs = CalibrationSet([CalibSample(list(range(3, 19)))] * 2, seqlen=16, tokenizer_name="other",
                        tokenizer_fingerprint=tokenizer_fingerprint(other))
    path = cs.save(tmp_path / "set.jsonl")
    code, _, err = run(capsys, *_prune_args(model, path))
    assert code == EXIT_ERROR
    assert "set.jsonl was made for another tokenizer" in error_line(err)


# ---- settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, expected", [
    (["--sparsity", "1.5"], "Sparsity must be between 0 and 1 (exclusive), got 1.5."),
    (["--sparsity", "0"], "Sparsity must be between 0 and 1"),
    (["--structure", "4:4"], "N:M structure needs 0 < N < M, got 4:4."),
    (["--structure", "2:6"], "not so for self_attn.q_proj (64)"),
    (["--seqlen", "1024"], "calibration sequence length 1024 is longer than the 512 tokens"),
    (["--eval-ppl", "EVAL", "--eval-seqlen", "4096"], "evaluation sequence length 4096"),
    (["--nsamples", "0"], "The number of calibration samples must be at least 1."),
])
def test_impossible_settings(capsys, model, text, tmp_path, extra, expected):
    extra = [str(text) if a == "EVAL" else a for a in extra]
    code, _, err = run(capsys, *_prune_args(model, text, *extra, out=tmp_path / "out"))
    assert code == EXIT_ERROR
    assert expected in error_line(err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("prune, expected", [
    ('{"sparsity": "half"}', "The PruneConfig setting 'sparsity' must be a number"),
    ('{"one_pass": "yes"}', "The PruneConfig setting 'one_pass' must be true or false"),
    ('{"dsnot_skip": "everything"}', "DSnoT's skip must be one of mlp, attention, none"),
])
def test_bad_recipe_file(capsys, tmp_path, prune, expected):
    p = tmp_path / "recipe.json"
    p.write_text('{"prune": %s}' % prune)
    code, _, err = run(capsys, "prune", "--recipe", p)
    assert code == EXIT_ERROR
    assert expected in error_line(err)


# ---- faults -----------------------------------------------------------------------------------

def test_out_of_memory(capsys, model, text, tmp_path, monkeypatch):
    from transformers.models.llama import modeling_llama

    def oom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", oom)
    code, _, err = run(capsys, *_prune_args(model, text, out=tmp_path / "out"))
    assert code == EXIT_ERROR
    line = error_line(err)
    assert "Out of memory on cpu while pruning block 0" in line and "fewer calibration samples" in line
    assert not (tmp_path / "out").exists()


def test_disk_full_during_export(capsys, model, text, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    out = tmp_path / "exports" / "pruned"
    code, _, err = run(capsys, *_prune_args(model, text, out=out))
    assert code == EXIT_ERROR
    assert "the disk is full. Nothing was written there." in error_line(err)
    assert list((tmp_path / "exports").iterdir()) == []


def test_unexpected_failure_exits_2_with_one_line(capsys, model, text, monkeypatch):
    import prunestudio.core.prune.block as block_mod

    def boom(*a, **k):
        raise ZeroDivisionError("a bug\nwith a second line")

    monkeypatch.setattr(block_mod, "prune_module", boom)
    code, _, err = run(capsys, *_prune_args(model, text))
    assert code == EXIT_UNEXPECTED
    assert error_line(err) == ("error: unexpected failure (ZeroDivisionError: a bug); "
                               "rerun with -v for the traceback")
    code, _, err = run(capsys, "-v", *_prune_args(model, text))
    assert code == EXIT_UNEXPECTED
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError" in err


def test_interrupt_exits_130(capsys, model, text, monkeypatch):
    import prunestudio.core.prune.block as block_mod

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(block_mod, "prune_module", interrupt)
    code, _, err = run(capsys, *_prune_args(model, text))
    assert code == EXIT_CANCELLED
    assert "Cancelled." in err and "Traceback" not in err


def test_eval_of_a_non_utf8_file(capsys, model, tmp_path):
    p = tmp_path / "wiki.test.txt"
    p.write_bytes(("Café " * 200).encode("latin-1"))
    code, _, err = run(capsys, "eval", "--model", model, "--ppl", p, "--seqlen", "16", "--device", "cpu")
    assert code == EXIT_ERROR
    assert "wiki.test.txt is not UTF-8 text" in error_line(err)


# ---- security ---------------------------------------------------------------------------------

def test_no_token_and_no_paths_in_output_or_reports(capsys, model, text, tmp_path, monkeypatch):
    secret = "hf_THISisAsecretTOKENvalue000000000000"
    monkeypatch.setenv("HF_TOKEN", secret)
    out, report = tmp_path / "pruned", tmp_path / "report.json"
    code, stdout, err = run(capsys, "-v", *_prune_args(model, text, "--eval-ppl", text, "--eval-max-windows", "2",
                                                     "--report", report, out=out))
    assert code == 0, err
    assert secret not in stdout + err
    for f in [report, out / "prunestudio.json", out / "README.md"]:
        body = f.read_text(encoding="utf-8")
        assert secret not in body, f
        assert str(tmp_path) not in body, f
    data = json.loads(report.read_text())
    assert data["recipe"]["calibration"]["source"] == "calib.txt"

    code, _, err = run(capsys, *_prune_args(model, text, "--include-paths", "--report", report))
    assert code == 0, err
    assert str(text) in report.read_text()


def test_every_subcommand_is_registered(capsys):
    """calib and experiment live in their own modules; they must reach the parser."""
    for command in ("prune", "eval", "fetch-demo-model", "calib", "experiment"):
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0, command
        assert "usage:" in capsys.readouterr().out


def test_a_broken_subcommand_module_is_an_error_not_a_missing_command(monkeypatch):
    from prunestudio.core.cli import calib
    from prunestudio.core.cli.commands import build_parser

    def broken(sub):
        raise ImportError("a dependency of the calib subcommand is missing")

    monkeypatch.setattr(calib, "register", broken)
    with pytest.raises(ImportError, match="calib subcommand"):
        build_parser()


def test_calib_generate_with_the_paper_protocol(capsys, model, text, tmp_path):
    out = tmp_path / "paper.jsonl"
    code, stdout, err = run(capsys, "calib", "generate", "--model", model, "--protocol", "paper", "--prefix-source",
                            text, "--n", "2", "--seqlen", "16", "--device", "cpu", "--out", out, "--threads", "1")
    assert code == 0, err
    cs = CalibrationSet.load(out)
    assert cs.settings["protocol"] == "paper" and len(cs) == 2 and cs.seqlen == 16
    assert "windows cut from" in err
    code, _, err = run(capsys, "calib", "generate", "--model", model, "--protocol", "paper", "--n", "2",
                       "--seqlen", "16", "--out", tmp_path / "none.jsonl")
    assert code == EXIT_ERROR and err.count("\n") == 1 and "--prefix-source" in err
