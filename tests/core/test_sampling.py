"""Calibration windows: reproducible for a seed, different across seeds, every source format."""

from __future__ import annotations

import gzip
import json

import pytest
from prunestudio.core.calib.calibset import CalibrationSet
from prunestudio.core.calib.sampling import sample_calibration
from prunestudio.core.errors import CalibrationError, ConfigError


@pytest.mark.parametrize("mode", ["random", "document"])
def test_same_seed_same_windows_other_seed_differs(tokenizer, tmp_path, mode):
    docs = [f"Document number {i}. " + ("The model writes text about pruning and data. " * 8) for i in range(40)]
    p = tmp_path / "docs.jsonl"
    p.write_text("\n".join(json.dumps({"text": d}) for d in docs), encoding="utf-8")
    a = sample_calibration(tokenizer, str(p), 8, 32, seed=0, mode=mode)
    b = sample_calibration(tokenizer, str(p), 8, 32, seed=0, mode=mode)
    c = sample_calibration(tokenizer, str(p), 8, 32, seed=1, mode=mode)
    assert a.input_ids().tolist() == b.input_ids().tolist()
    assert a.sha256() == b.sha256()
    assert a.input_ids().tolist() != c.input_ids().tolist()
    assert tuple(a.input_ids().shape) == (8, 32)


def test_random_windows_come_from_the_joined_corpus(tokenizer, corpus_file):
    cs = sample_calibration(tokenizer, str(corpus_file), 5, 40, seed=3)
    rows = [line for line in corpus_file.read_text(encoding="utf-8").splitlines(keepends=True) if line.strip()]
    stream = []
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    for i, row in enumerate(rows):
        if i:
            stream += sep
        stream += tokenizer(row, add_special_tokens=False)["input_ids"]
    joined = ",".join(map(str, stream))
    for s in cs.samples:
        assert ",".join(map(str, s.input_ids)) in joined


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "jsonl.gz", "json", "csv", "parquet"])
def test_every_file_format(tokenizer, tmp_path, fmt):
    docs = [f"Row {i}: calibration text matters for pruning large language models." for i in range(50)]
    p = tmp_path / f"data.{fmt}"
    if fmt == "txt":
        p.write_text("\n".join(docs), encoding="utf-8")
    elif fmt == "jsonl":
        p.write_text("\n".join(json.dumps({"id": i, "content": d}) for i, d in enumerate(docs)), encoding="utf-8")
    elif fmt == "jsonl.gz":
        with gzip.open(p, "wt", encoding="utf-8") as f:
            f.write("\n".join(json.dumps({"text": d}) for d in docs))
    elif fmt == "json":
        p.write_text(json.dumps([{"text": d} for d in docs]), encoding="utf-8")
    elif fmt == "csv":
        p.write_text("id,text\n" + "\n".join(f'{i},"{d}"' for i, d in enumerate(docs)), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": docs}), p)
    cs = sample_calibration(tokenizer, str(p), 4, 16, seed=0)
    assert len(cs) == 4
    flat = "".join("".join(docs).split())
    for s in cs.samples:  # every window is a piece of the documents (whitespace aside)
        assert "".join(s.text.split()) in flat


def test_too_little_text_says_what_is_possible(tokenizer, tmp_path):
    p = tmp_path / "small.txt"
    p.write_text("A short file about pruning.\n" * 20, encoding="utf-8")
    with pytest.raises(CalibrationError, match="Possible: at most"):
        sample_calibration(tokenizer, str(p), 64, 128)


def test_saved_set_is_used_as_is(tokenizer, corpus_file, tmp_path):
    cs = sample_calibration(tokenizer, str(corpus_file), 6, 24, seed=2)
    path = cs.save(tmp_path / "set.jsonl")
    again = sample_calibration(tokenizer, str(path), 6, 24)
    assert again.input_ids().tolist() == cs.input_ids().tolist()
    fewer = sample_calibration(tokenizer, str(path), 4, 16)
    assert fewer.input_ids().tolist() == [row[:16] for row in cs.input_ids().tolist()[:4]]


def test_set_for_another_tokenizer_is_refused(tokenizer, corpus_file, tmp_path):
    from conftest import byte_tokenizer

    cs = sample_calibration(tokenizer, str(corpus_file), 4, 16)
    path = cs.save(tmp_path / "set.jsonl")
    with pytest.raises(CalibrationError, match="another tokenizer"):
        CalibrationSet.load(path, byte_tokenizer(280))


def test_zero_samples_is_refused(tokenizer, corpus_file):
    with pytest.raises(ConfigError):
        sample_calibration(tokenizer, str(corpus_file), 0, 16)


def test_calibration_set_copy_is_independent(tokenizer, corpus_file):
    cs = sample_calibration(tokenizer, str(corpus_file), 4, 16, seed=0)
    original = list(cs.samples[1].input_ids)
    cp = cs.copy()
    cp.samples[0].dropped = True
    cp.samples[1].input_ids[0] = original[0] + 1
    assert not cs.samples[0].dropped and len(cs) == 4 and len(cp) == 3
    assert cs.samples[1].input_ids == original
