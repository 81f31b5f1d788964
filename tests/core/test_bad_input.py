"""Every bad input gets one readable sentence (a PruneStudioError), and nothing is lost.

Models (missing, broken, unknown, remote code, pickles, GGUF), calibration files (empty, binary,
not UTF-8, broken JSONL, too short, huge, another tokenizer's set), impossible settings, faults
(out of memory, disk full, cancel in every phase, a crashing worker), security (no remote code,
no unsafe pickles, no tokens or private paths in reports), and a property-based test that throws
generated junk at every file loader.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import logging
import os
import shutil
import string
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import CORPUS, byte_tokenizer, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prunestudio.core.calib import sampling as sampling_mod
from prunestudio.core.calib import textsources
from prunestudio.core.calib.calibset import CalibrationSet, CalibSample, tokenizer_fingerprint
from prunestudio.core.calib.sampling import sample_calibration
from prunestudio.core.calib.textsources import iter_texts
from prunestudio.core.config import CalibConfig, PruneConfig, Recipe
from prunestudio.core.errors import (
    CalibrationError,
    Cancelled,
    ConfigError,
    ExportError,
    ModelLoadError,
    PruneStudioError,
)
from prunestudio.core.evaluate.task_data import TASKS, load_task
from prunestudio.core.events import Message, PhaseStarted, RunStarted, run_to_completion
from prunestudio.core.model import loading as models_mod
from prunestudio.core.model.loading import load_model
from prunestudio.core.prune.block import BlockOutOfMemory
from prunestudio.core.prune.pipeline import iter_prune
from prunestudio.core.prune.result import is_incomplete
from prunestudio.core.run.calibration import build_calibration
from prunestudio.core.run.checks import validate_recipe
from prunestudio.core.run.evaluation import iter_eval_ppl
from prunestudio.core.run.export import REPORT_NAME, iter_export
from prunestudio.core.run.job import iter_job

# ---- shared material --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer(300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    """A tiny Llama saved as a Hugging Face folder (safetensors + tokenizer), max context 512."""
    d = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_model("llama", vocab_size=len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def model_copy(model_dir, tmp_path):
    def make(name: str = "model") -> Path:
        d = tmp_path / name
        shutil.copytree(model_dir, d)
        return d

    return make


def _set_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _load(path, **kw):
    return load_model(str(path), device="cpu", dtype="fp32", **kw)


def _write_gguf(path: Path, arch: str) -> Path:
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


class _Thing:
    """An arbitrary class: its pickled instance is not a tensor."""

    def __init__(self) -> None:
        self.x = 1


class _Evil:
    """Unpickling this runs a command, if the loader allows arbitrary globals."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---- models -----------------------------------------------------------------------------------

def test_model_path_missing(tmp_path):
    with pytest.raises(ModelLoadError, match="Model not found"):
        _load(tmp_path / "nowhere")


def test_folder_without_config(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="has no config.json"):
        _load(tmp_path / "weights")


def test_config_not_an_object(model_copy):
    d = model_copy()
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="not a JSON object"):
        _load(d)


@pytest.mark.parametrize("how", ["truncated", "garbage header", "empty"])
def test_truncated_or_corrupt_safetensors(model_copy, how):
    d = model_copy()
    f = d / "model.safetensors"
    data = f.read_bytes()
    if how == "truncated":
        f.write_bytes(data[: len(data) // 2])
    elif how == "garbage header":
        f.write_bytes(data[:8] + b"#" * 32 + data[40:])
    else:
        f.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="model.safetensors is truncated or corrupt") as ei:
        _load(d)
    assert "download it again" in str(ei.value)


def test_unknown_architecture(model_copy):
    d = model_copy()
    _set_config(d, model_type="bogus", architectures=["BogusForCausalLM"])
    with pytest.raises(ModelLoadError, match="architecture 'bogus'.*does not know"):
        _load(d)


def test_config_without_model_type(model_copy):
    d = model_copy()
    cfg = json.loads((d / "config.json").read_text())
    del cfg["model_type"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="has no model_type"):
        _load(d)


def test_weights_of_another_architecture_are_not_silently_random(model_copy):
    d = model_copy()
    _set_config(d, model_type="gpt2", architectures=["GPT2LMHeadModel"], n_embd=64, n_layer=2, n_head=4)
    with pytest.raises(ModelLoadError, match="do not match its config.json"):
        _load(d)


def test_gguf_of_an_unsupported_architecture(tmp_path):
    p = _write_gguf(tmp_path / "odd.gguf", "bogusarch")
    with pytest.raises(ModelLoadError, match="cannot read GGUF models of the 'bogusarch' architecture") as ei:
        _load(p)
    assert "llama" in str(ei.value)  # says what it can read


def test_gguf_junk_and_truncated(tmp_path):
    (tmp_path / "a").mkdir()
    junk = tmp_path / "a" / "junk.gguf"
    junk.write_bytes(b"hello, not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        _load(junk)
    good = _write_gguf(tmp_path / "cut.gguf", "llama")
    good.write_bytes(good.read_bytes()[:40])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        _load(good)


def test_remote_code_is_refused_with_the_option_explained(model_copy, tmp_path):
    d = model_copy()
    marker = tmp_path / "code-ran"
    _set_config(d, model_type="mycustom", architectures=["MyForCausalLM"],
                auto_map={"AutoConfig": "configuration_my.MyConfig",
                          "AutoModelForCausalLM": "modeling_my.MyForCausalLM"})
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (d / "configuration_my.py").write_text(code)
    (d / "modeling_my.py").write_text(code)
    with pytest.raises(ModelLoadError, match="does not run by default") as ei:
        _load(d)
    assert "--trust-remote-code" in str(ei.value)
    assert not marker.exists()


def test_no_trust_remote_code_by_default(model_dir, monkeypatch):
    import transformers

    seen = []
    real_model = transformers.AutoModelForCausalLM.from_pretrained.__func__
    real_tok = transformers.AutoTokenizer.from_pretrained.__func__

    def spy_model(cls, *a, **k):
        seen.append(("model", k.get("trust_remote_code"), k.get("weights_only")))
        return real_model(cls, *a, **k)

    def spy_tok(cls, *a, **k):
        seen.append(("tokenizer", k.get("trust_remote_code"), None))
        return real_tok(cls, *a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy_model))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(spy_tok))
    _load(model_dir)
    assert seen == [("model", False, True), ("tokenizer", False, None)]
    assert Recipe().trust_remote_code is False


@pytest.fixture
def bin_model(model_copy, tok):
    """A model folder with pickled ``pytorch_model.bin`` weights instead of safetensors."""
    def make(name: str, extra=None) -> Path:
        d = model_copy(name)
        (d / "model.safetensors").unlink()
        state = tiny_model("llama", vocab_size=len(tok)).state_dict()
        if extra is not None:
            state["extra"] = extra
        torch.save(state, d / "pytorch_model.bin")
        return d

    return make


def test_pickled_bin_loads_with_weights_only(bin_model, monkeypatch):
    d = bin_model("bin")
    calls = []
    real = torch.load

    def spy(*a, **k):
        calls.append(k.get("weights_only"))
        return real(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    loaded = _load(d)
    assert loaded.info["blocks"] == 3
    assert calls and all(c is True for c in calls)


def test_pickled_object_in_bin_is_refused(bin_model):
    d = bin_model("thing", extra=_Thing())
    with pytest.raises(ModelLoadError, match="refused for safety") as ei:
        _load(d)
    assert "weights_only=True" in str(ei.value)


def test_malicious_pickle_never_runs(bin_model, tmp_path):
    marker = tmp_path / "pwned"
    d = bin_model("evil", extra=_Evil(marker))
    with pytest.raises(ModelLoadError, match="refused for safety"):
        _load(d)
    assert not marker.exists()


def test_load_model_is_cancellable_between_steps(model_dir):
    for n in range(1, 5):  # every check: before, after finding the files, the weights, the tokenizer
        calls = []

        def stop():
            calls.append(1)
            return len(calls) >= n

        with pytest.raises(Cancelled):
            _load(model_dir, should_stop=stop)


# ---- calibration files ------------------------------------------------------------------------

@pytest.mark.parametrize("name, data, match", [
    ("empty.txt", b"", "is empty"),
    ("empty.jsonl", b"", "is empty"),
    ("blank.txt", b"  \n\n \t\n", "only whitespace"),
    ("binary.txt", bytes(range(256)) * 4, "binary"),
    ("binary.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    ("latin1.txt", "Café crème, déjà vu.\n".encode("latin-1"), "not UTF-8"),
    ("latin1.csv", "text\nCafé\n".encode("latin-1"), "not UTF-8"),
    ("notgzip.txt.gz", b"plain text, not gzip", "not a valid gzip file"),
    ("broken.json", b'[{"text": "a"', "not valid JSON"),
    ("numbers.json", b"[1, 2, 3]", "holds no text"),
    ("truncated.json", b'{"data": [{"text": "a"}, {"text": "b', "not valid JSON"),
    ("nolist.json", b'{"name": "x", "count": 3}', "not a list of records"),
    ("scalar.json", b"42", "not a list of records"),
    ("garbage.json", b"[1, 2] trailing ] ]", "holds no text"),
    ("nocolumn.csv", b"a,b\n,\n,\n", "empty in every row"),
    ("junk.parquet", b"PAR1 this is not parquet", "not a readable Parquet file"),
])
def test_unusable_calibration_file(tmp_path, name, data, match):
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(CalibrationError, match=match):
        list(iter_texts(str(p)))


@pytest.mark.parametrize("chunk", [3, 7, 1 << 16])
def test_json_records_are_streamed_exactly(tmp_path, monkeypatch, chunk):
    """The incremental JSON reader gives what json.load gives, whatever the read size (numbers,
    escapes and records cut at every position of the buffer)."""
    monkeypatch.setattr(textsources, "_JSON_CHUNK", chunk)
    records = [{"id": 12345678901234, "text": f"doc {i} \u00e9\"q\" \\ 1e5", "score": -1.5e-7}
               for i in range(40)] + ["a bare string", {"nested": {"text": "x"}, "text": "last"}]
    for payload in (records, {"meta": {"rows": 3, "x": [1, 2]}, "rows": records}):
        p = tmp_path / "set.json"
        p.write_text(json.dumps(payload, indent=1 if chunk == 3 else None), encoding="utf-8")
        expected = [r if isinstance(r, str) else r["text"] for r in records]
        assert list(iter_texts(str(p))) == expected


def test_missing_calibration_file(tmp_path):
    with pytest.raises(CalibrationError, match="not found"):
        list(iter_texts(str(tmp_path / "nope.txt")))


def test_jsonl_without_a_text_field(tmp_path):
    p = tmp_path / "ids.jsonl"
    p.write_text("\n".join(json.dumps({"id": i, "score": i / 2}) for i in range(5)) + "\n")
    with pytest.raises(CalibrationError, match="no line holds a JSON object with a text field") as ei:
        list(iter_texts(str(p)))
    msg = str(ei.value)
    assert "5 unusable lines: 1, 2, 3, 4, 5" in msg and "id, score" in msg and "#field" in msg


def test_jsonl_broken_lines_are_listed(tmp_path, caplog):
    p = tmp_path / "mixed.jsonl"
    lines = [json.dumps({"text": "one"}), "{broken", json.dumps({"text": "three"}), "[1, 2]",
             json.dumps({"text": 5}), json.dumps({"text": "six"})]
    p.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="prunestudio"):
        assert list(iter_texts(str(p))) == ["one", "three", "six"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped 3 broken or text-less lines (2, 4, 5)" in w for w in warnings), warnings


def test_jsonl_broken_lines_are_reported_when_reading_stops_early(tmp_path, caplog):
    p = tmp_path / "big.jsonl"
    p.write_text("{bad\n" + "\n".join(json.dumps({"text": f"doc {i}"}) for i in range(100)) + "\n")
    gen = iter_texts(str(p))
    with caplog.at_level(logging.WARNING, logger="prunestudio"):
        assert next(gen) == "doc 0"
        gen.close()
    assert any("skipped 1 broken or text-less lines in the part read (1)" in r.getMessage()
               for r in caplog.records)


def test_jsonl_named_field_missing_everywhere(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    with pytest.raises(CalibrationError, match="'body' text field"):
        list(iter_texts(f"{p}#body"))


def test_fully_broken_jsonl_is_an_error(tmp_path):
    p = tmp_path / "broken.jsonl"
    p.write_text("{not json\n" * 12)
    with pytest.raises(CalibrationError, match=r"12 unusable lines: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 \.\.\."):
        list(iter_texts(str(p)))


def test_too_few_tokens_says_what_is_possible(tmp_path, tok):
    p = tmp_path / "short.txt"
    p.write_text(CORPUS + "\n")
    with pytest.raises(CalibrationError, match="Possible: at most") as ei:
        sample_calibration(tok, str(p), nsamples=64, seqlen=32)
    assert "64 x 32" in str(ei.value)
    with pytest.raises(CalibrationError, match="not enough for one window of 4096. Possible: 2 samples of"):
        sample_calibration(tok, str(p), nsamples=2, seqlen=4096)


def test_huge_source_is_streamed_up_to_the_budget(tok, monkeypatch):
    """An endless source: sampling stops reading once it has its token budget."""
    consumed = []

    def endless(source, text_field=None):
        for i in itertools.count():
            if i > 100_000:
                raise AssertionError("read far beyond the token budget")
            consumed.append(i)
            yield CORPUS

    monkeypatch.setattr(sampling_mod, "iter_texts", endless)
    monkeypatch.setattr(sampling_mod, "_token_budget", lambda n, s: 20_000)
    cs = sample_calibration(tok, "endless.txt", nsamples=4, seqlen=32)
    assert len(cs) == 4
    per_doc = len(tok(CORPUS, add_special_tokens=False)["input_ids"])
    assert len(consumed) <= 20_000 // per_doc + 2 * sampling_mod._TOKENIZE_BATCH


@pytest.mark.parametrize("kind", ["txt", "jsonl", "json-list", "json-object"])
def test_huge_file_is_not_read_whole(tmp_path, tok, monkeypatch, kind):
    """A 24 MB file: only a small prefix is read for a small budget (the reader is spied on)."""
    count = 24_000_000 // (len(CORPUS) + 20)
    if kind == "txt":
        p, head, item, sep, tail = tmp_path / "big.txt", "", (CORPUS + "\n"), "", ""
    elif kind == "jsonl":
        p, head, item, sep, tail = tmp_path / "big.jsonl", "", json.dumps({"text": CORPUS}) + "\n", "", ""
    elif kind == "json-list":
        p, head, item, sep, tail = tmp_path / "big.json", "[", json.dumps({"text": CORPUS}), ",\n", "]"
    else:
        p, head, item, sep, tail = (tmp_path / "big.json", '{"name": "set", "data": [', json.dumps(CORPUS),
                                    ", ", "]}")
    with open(p, "w", encoding="utf-8") as f:
        f.write(head + sep.join([item] * count) + tail)
    read = [0]
    real_open = textsources._open_text

    class Counting(io.RawIOBase):
        def __init__(self, raw):
            self.raw = raw

        def readable(self):
            return True

        def readinto(self, b):
            n = self.raw.readinto(b)
            read[0] += n or 0
            return n

        def close(self):
            self.raw.close()
            super().close()

    def spy(path):
        wrapper = real_open(path)
        raw = wrapper.detach()
        raw.seek(0)
        return io.TextIOWrapper(io.BufferedReader(Counting(raw)), encoding="utf-8", newline="")

    monkeypatch.setattr(textsources, "_open_text", spy)
    monkeypatch.setattr(sampling_mod, "_token_budget", lambda n, s: 20_000)
    cs = sample_calibration(tok, str(p), nsamples=4, seqlen=32)
    assert len(cs) == 4
    assert 0 < read[0] < 2_000_000 < p.stat().st_size


def test_saved_set_of_another_tokenizer_is_refused(tmp_path, tok):
    other = byte_tokenizer(280)
    cs = CalibrationSet([CalibSample([5, 6, 7, 8])], seqlen=4, tokenizer_name="other-model",
                        tokenizer_fingerprint=tokenizer_fingerprint(other))
    path = cs.save(tmp_path / "set.jsonl")
    with pytest.raises(CalibrationError, match="made for another tokenizer"):
        CalibrationSet.load(path, tok)
    with pytest.raises(CalibrationError, match="made for another tokenizer"):
        sample_calibration(tok, str(path), nsamples=1, seqlen=4)


def test_saved_set_with_ids_beyond_the_vocabulary(tmp_path, tok):
    cs = CalibrationSet([CalibSample([5, 6, 7, 10_000])], seqlen=4)  # no fingerprint recorded
    path = cs.save(tmp_path / "set.jsonl")
    with pytest.raises(CalibrationError, match="beyond this tokenizer"):
        CalibrationSet.load(path, tok)


# ---- settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.1, 1.5])
def test_sparsity_outside_0_1(sparsity):
    with pytest.raises(ConfigError, match="between 0 and 1"):
        PruneConfig(sparsity=sparsity)


@pytest.mark.parametrize("structure", ["4:4", "5:4", "0:4", "2:0"])
def test_n_not_below_m(structure):
    with pytest.raises(ConfigError, match="0 < N < M"):
        PruneConfig(structure=structure)


def test_m_not_dividing_a_module_names_it(model_dir, tok):
    loaded = _load(model_dir)
    recipe = Recipe(model=str(model_dir), prune=PruneConfig(method="magnitude", structure="2:6"))
    with pytest.raises(ConfigError, match=r"multiple of 6; not so for self_attn.q_proj \(64\)") as ei:
        validate_recipe(loaded, recipe)
    assert "mlp.down_proj (128)" in str(ei.value)
    # and the pipeline itself says which module, for callers that skip the job
    with pytest.raises(ConfigError, match="module self_attn.q_proj"):
        run_to_completion(iter_prune(loaded.model, None, PruneConfig(method="magnitude", structure="2:6")))
    # the job refuses it before any calibration
    with pytest.raises(ConfigError, match="multiple of 6"):
        run_to_completion(iter_job(recipe, loaded=loaded))


def test_seqlen_beyond_the_context(model_dir, tmp_path, corpus_file):
    loaded = _load(model_dir)
    assert loaded.info["max_context"] == 512
    cal = CalibConfig(source=str(corpus_file), nsamples=2, seqlen=1024)
    with pytest.raises(ConfigError, match="1024 is longer than the 512 tokens"):
        run_to_completion(build_calibration(loaded, cal))
    recipe = Recipe(model=str(model_dir), calibration=cal)
    calls = []
    with pytest.raises(ConfigError, match="calibration sequence length 1024"):
        run_to_completion(iter_job(recipe, loaded=loaded, should_stop=lambda: calls.append(1) or False))
    assert calls == []  # refused before anything long started
    with pytest.raises(ConfigError, match="evaluation sequence length 2048"):
        run_to_completion(iter_eval_ppl(loaded, str(corpus_file), 2048))


def test_zero_samples(tok, corpus_file):
    with pytest.raises(ConfigError, match="at least 1"):
        CalibConfig(nsamples=0)
    with pytest.raises(ConfigError, match="at least 1"):
        sample_calibration(tok, str(corpus_file), nsamples=0, seqlen=16)


# ---- faults -----------------------------------------------------------------------------------

@pytest.mark.parametrize("one_pass", [True, False])
def test_out_of_memory_in_a_block(tok, one_pass):
    model = tiny_model("llama", vocab_size=len(tok))
    block = model.model.layers[1]

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    block.mlp.forward = oom
    ids = torch.randint(3, len(tok), (4, 16))
    with pytest.raises(BlockOutOfMemory, match="block 1") as ei:
        run_to_completion(iter_prune(model, ids, PruneConfig(method="wanda", one_pass=one_pass, batch_size=2)))
    assert "fewer calibration samples" in str(ei.value) and "offload" in str(ei.value)
    assert ("--two-pass" in str(ei.value)) == one_pass  # one pass holds every batch in the block
    assert is_incomplete(model)


def _pruned(tok):
    model = tiny_model("llama", vocab_size=len(tok))
    res = run_to_completion(iter_prune(model, None, PruneConfig(method="magnitude")))
    return model, res


def test_failed_export_leaves_an_existing_folder_untouched(tok, tmp_path, monkeypatch):
    model, res = _pruned(tok)
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("previous export")

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model, "save_pretrained", full)
    with pytest.raises(ExportError, match="the disk is full. Nothing was written there"):
        run_to_completion(iter_export(model, tok, target, res.to_dict(), overwrite=True))
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unwritable_folder_even_as_root(tok, tmp_path, monkeypatch):
    import prunestudio.core.run.export as export_mod

    model, res = _pruned(tok)

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(export_mod.tempfile, "mkdtemp", denied)
    with pytest.raises(ExportError, match="Cannot write in"):
        run_to_completion(iter_export(model, tok, tmp_path / "x", res.to_dict()))
    assert list(tmp_path.iterdir()) == []


# cancel in every phase: a dry run records which should_stop call falls in which phase, then the
# job runs again with a should_stop that flips at the first call of that phase

PHASES = ("load", "generate", "ppl-dense", "prune", "ppl-pruned", "export")


def _phase_of(ev, current: str) -> str:
    if isinstance(ev, RunStarted):
        return "prune"
    if isinstance(ev, PhaseStarted):
        if ev.phase in ("capture", "owl"):
            return "prune"
        if ev.phase == "filter":
            return "generate"
        return ev.phase
    return current


def _drive(gen, on_phase):
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        on_phase(ev)


@pytest.fixture(scope="module")
def job_recipe(model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("jobdata")
    (d / "eval.txt").write_text((CORPUS + "\n") * 10)
    return Recipe(model=str(model_dir), device="cpu", dtype="fp32",
                  prune=PruneConfig(method="wanda"),
                  calibration=CalibConfig(source="selfgen", nsamples=2, seqlen=12, drop_top=0.0),
                  eval_ppl=(str(d / "eval.txt"),), eval_max_windows=2)


@pytest.fixture(scope="module")
def calls_by_phase(job_recipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("dry") / "out"
    phase = ["start"]
    calls: list[str] = []

    def stop():
        calls.append(phase[0])
        return False

    def on(ev):
        phase[0] = _phase_of(ev, phase[0])

    _drive(iter_job(job_recipe, out, should_stop=stop), on)
    assert out.is_dir()
    return calls


@pytest.mark.parametrize("phase", PHASES)
def test_cancel_in_every_phase(job_recipe, calls_by_phase, tmp_path, phase):
    assert phase in calls_by_phase, f"should_stop is never asked during {phase}"
    n = calls_by_phase.index(phase) + 1
    count = [0]
    seen = ["start"]

    def stop():
        count[0] += 1
        return count[0] >= n

    def on(ev):
        seen[0] = _phase_of(ev, seen[0])

    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        _drive(iter_job(job_recipe, out, should_stop=stop), on)
    assert count[0] == n and seen[0] == phase
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no partial export beside it either


def test_worker_crash_surfaces_as_the_original_exception(job_recipe, tmp_path, monkeypatch):
    import prunestudio.core.prune.block as block_mod

    def boom(*a, **k):
        raise KeyError("something the engine did not expect")

    monkeypatch.setattr(block_mod, "prune_module", boom)
    recipe = Recipe(model=job_recipe.model, prune=PruneConfig(method="magnitude"))
    gen = iter_job(recipe, tmp_path / "out")
    with pytest.raises(KeyError, match="did not expect"):
        run_to_completion(gen)
    assert not (tmp_path / "out").exists()


# ---- security ---------------------------------------------------------------------------------

def test_reports_hold_no_token_and_no_private_paths(model_dir, tmp_path, monkeypatch, caplog):
    secret = "hf_SECRETtokenTHATmustNEVERleak0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", secret)
    private = tmp_path / "private" / "folders"
    model = private / "my-model"
    shutil.copytree(model_dir, model)
    calib = private / "notes.txt"
    calib.write_text((CORPUS + "\n") * 40)
    recipe = Recipe(model=str(model), device="cpu", dtype="fp32",
                    prune=PruneConfig(method="wanda"),
                    calibration=CalibConfig(source=str(calib), nsamples=2, seqlen=16),
                    eval_ppl=(str(calib),), eval_max_windows=2)
    out = tmp_path / "export"
    with caplog.at_level(logging.DEBUG):
        res = run_to_completion(iter_job(recipe, out))
    texts = {p.name: p.read_text(encoding="utf-8") for p in out.iterdir()
             if p.suffix in (".json", ".md", ".txt", ".jinja")}
    assert REPORT_NAME in texts and "README.md" in texts
    texts["report (in memory)"] = json.dumps(res.report, default=str)
    texts["log"] = caplog.text
    for name, text in texts.items():
        assert secret not in text, name
    for name in (REPORT_NAME, "README.md", "report (in memory)"):
        assert str(tmp_path) not in texts[name], name
        assert str(private) not in texts[name], name
    report = json.loads(texts[REPORT_NAME])
    assert report["model"]["name"] == "my-model"
    assert report["calibration"]["source"] == "notes.txt"
    assert report["calibration"]["tokenizer"] == "my-model"

    with_paths = run_to_completion(iter_job(recipe, None, include_paths=True, loaded=res.loaded)).report
    assert str(calib) in json.dumps(with_paths)


# ---- property-based: junk at every file loader ------------------------------------------------

_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _truncated(doc: str):
    return st.integers(0, len(doc)).map(lambda i: doc[:i])


_csv_text = st.lists(
    st.lists(st.text(alphabet=string.printable + "éß\u2028\"", max_size=12), min_size=1, max_size=4),
    max_size=6,
).map(lambda rows: "\n".join(",".join(r) for r in rows))

_texts = st.one_of(
    st.text(max_size=300),
    _json_values.map(json.dumps),
    _json_values.map(lambda v: json.dumps(v)).flatmap(_truncated),
    st.lists(_json_values.map(json.dumps), max_size=6).map("\n".join),
    _csv_text,
    st.sampled_from(["[" * 5000, '{"a":' * 3000, "1" * 5000, '{"text": 1e999}', "NaN", "\x00\x00text"]),
)

_plain = st.one_of(st.binary(max_size=400), _texts.map(lambda t: t.encode("utf-8", "surrogatepass")))


@st.composite
def _gzip_junk(draw):
    payload = draw(_plain)
    kind = draw(st.sampled_from(["whole", "truncated", "magic+junk", "raw"]))
    if kind == "whole":
        return gzip.compress(payload)
    if kind == "truncated":
        data = gzip.compress(payload)
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    if kind == "magic+junk":
        return b"\x1f\x8b\x08\x00" + draw(st.binary(max_size=200))
    return payload


_files = st.one_of(_plain, _gzip_junk())


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _only_our_errors(fn):
    try:
        fn()
    except PruneStudioError as e:
        assert str(e).strip(), "an error without a sentence"
    except RecursionError:  # pragma: no cover - reported as a leak below
        raise AssertionError("RecursionError leaked")


_EXTS = (".txt", ".jsonl", ".json", ".csv", ".parquet", ".txt.gz", ".jsonl.gz", ".json.gz", ".csv.gz",
         ".ndjson", ".raw")


@_FUZZ
@given(data=_files, ext=st.sampled_from(_EXTS))
def test_fuzz_iter_texts(fuzz_dir, data, ext):
    p = fuzz_dir / f"calib{ext}"
    p.write_bytes(data)
    _only_our_errors(lambda: list(itertools.islice(iter_texts(str(p)), 10_000)))


@_FUZZ
@given(data=_files, header=st.booleans(), lines=st.lists(_json_values.map(json.dumps), max_size=4))
def test_fuzz_calibration_set_load(fuzz_dir, tok, data, header, lines):
    p = fuzz_dir / "set.jsonl"
    if header:  # a real header, then junk samples
        head = json.dumps({"format": "prunestudio-calibration-set", "version": 1, "seqlen": 4})
        p.write_bytes(head.encode() + b"\n" + "\n".join(lines).encode() + b"\n" + data)
    else:
        p.write_bytes(data)
    _only_our_errors(lambda: CalibrationSet.load(p, tok))
    _only_our_errors(lambda: sample_calibration(tok, str(p), nsamples=1, seqlen=4))


_RECIPE = json.dumps(Recipe().to_dict())


@_FUZZ
@given(data=st.one_of(_files, _truncated(_RECIPE).map(str.encode),
                      _json_values.map(lambda v: json.dumps(v).encode()),
                      st.dictionaries(st.sampled_from(["model", "prune", "calibration", "eval_ppl", "device",
                                                       "eval_seqlen", "trust_remote_code", "format"]),
                                      _json_values, max_size=4).map(lambda d: json.dumps(d).encode())))
def test_fuzz_recipe_load(fuzz_dir, data):
    p = fuzz_dir / "recipe.json"
    p.write_bytes(data)
    _only_our_errors(lambda: Recipe.load(p))


_TASK_FILES = {
    "arc_easy": "arc/ARC-Easy-Test.jsonl",
    "arc_challenge": "arc/ARC-Challenge-Test.jsonl",
    "piqa": "piqa/valid.jsonl",
    "hellaswag": "hellaswag/hellaswag_val.jsonl",
    "winogrande": "winogrande/winogrande.llm-foundry.jsonl",
    "boolq": "boolq/superglue-boolq-val.jsonl",
    "openbookqa": "openbookqa/test.tsv",
}
_TASK_EXTRA = {  # formats reached only when the preferred file is absent
    "hellaswag_txt": ("hellaswag", "hellaswag/hellaswag_val_full.txt"),
    "hellaswag_bz2": ("hellaswag", "hellaswag/hellaswag_val_full.txt.bz2"),
    "openbookqa_jsonl": ("openbookqa", "openbookqa/openbook_qa.llm-foundry.jsonl"),
    "winogrande_dev": ("winogrande", "winogrande/dev.jsonl"),
}


def test_every_task_has_a_fuzzed_file():
    assert set(_TASK_FILES) == set(TASKS)


@_FUZZ
@given(data=_files, which=st.sampled_from(sorted(_TASK_FILES) + sorted(_TASK_EXTRA)),
       labels=st.binary(max_size=40), bz2_wrap=st.booleans())
def test_fuzz_task_readers(data, which, labels, bz2_wrap):
    import bz2

    task, rel = _TASK_EXTRA.get(which, (which, _TASK_FILES.get(which)))
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / rel
        p.parent.mkdir(parents=True)
        if rel.endswith(".bz2") and bz2_wrap:
            data = bz2.compress(data)
        p.write_bytes(data)
        if task == "piqa":
            (p.parent / "valid-labels.lst").write_bytes(labels)
        _only_our_errors(lambda: load_task(task, tmp, limit=50))


@_FUZZ
@given(data=st.one_of(
    st.binary(max_size=300),
    st.tuples(st.integers(0, 2**64 - 1), st.binary(max_size=100)).map(
        lambda t: struct.pack("<Q", t[0]) + t[1]),
    _json_values.map(lambda v: json.dumps(v).encode()).map(lambda h: struct.pack("<Q", len(h)) + h),
    st.dictionaries(st.text(max_size=5), _json_values, max_size=3).map(
        lambda d: json.dumps(d).encode()).map(lambda h: struct.pack("<Q", len(h)) + h + b"\0" * 16),
))
def test_fuzz_check_safetensors(fuzz_dir, data):
    p = fuzz_dir / "model.safetensors"
    p.write_bytes(data)
    _only_our_errors(lambda: models_mod._check_safetensors(p))


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_bf16_instructions_is_flagged(job_recipe, tmp_path, monkeypatch, native):
    """bf16 on a CPU that emulates it runs, with a warning naming the faster choice."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: native)
    recipe = Recipe(model=job_recipe.model, device="cpu", dtype="bf16", prune=job_recipe.prune,
                    calibration=job_recipe.calibration)
    seen: list = []
    with pytest.raises(Cancelled):  # stop once the model is loaded and announced
        _drive(iter_job(recipe, tmp_path / "out", should_stop=lambda: any(
            isinstance(e, Message) and e.text.startswith("Loaded") for e in seen)), seen.append)
    warnings = [e.text for e in seen if isinstance(e, Message) and e.level == "warning"]
    if native:
        assert not any("bfloat16" in w for w in warnings)
    else:
        assert any("no bfloat16 instructions" in w and "fp32" in w for w in warnings)


def test_slow_dtype_warning_only_for_emulated_bf16_on_the_cpu(monkeypatch):
    from prunestudio.core.model.devices import slow_dtype_warning

    def broken():
        raise RuntimeError("probe failed")

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", broken)  # unknown counts as absent
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    cpu = torch.device("cpu")
    assert slow_dtype_warning(cpu, torch.bfloat16)
    assert slow_dtype_warning(cpu, torch.float32) is None
    assert slow_dtype_warning(torch.device("cuda", 0), torch.bfloat16) is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert slow_dtype_warning(cpu, torch.bfloat16) is None
