"""Perplexity suites (core/evaluate/ppl_suites.py): the SparseGPT/Wanda conventions for WikiText-2 and C4."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from prunestudio.core.errors import EvaluationError
from prunestudio.core.evaluate import ppl_suites
from prunestudio.core.evaluate.perplexity import eval_ids, eval_text, perplexity
from prunestudio.core.evaluate.ppl_suites import (
    C4_DOCS,
    C4_WINDOWS,
    SUITES,
    find_suite_file,
    join_documents,
    ppl_suite_text,
    suite_documents,
    suite_ids,
    suite_max_windows,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def write_c4(folder: Path, n: int = 1200, name: str = "c4-en-validation-subset-2k.jsonl.gz") -> list[str]:
    docs = [f"Document number {i} says hello {i % 7} times." for i in range(n)]
    (folder / "c4").mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "c4" / name, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d, "url": "u", "timestamp": "t"}) + "\n")
    return docs


def write_wiki(folder: Path) -> list[str]:
    lines = [" \n", " = Title = \n", " \n", " First paragraph , with words . \n", " \n", " Second one . \n"]
    (folder / "wikitext-2").mkdir(parents=True, exist_ok=True)
    (folder / "wikitext-2" / "wiki.test.raw").write_text("".join(lines * 30), encoding="utf-8")
    return lines * 30


def test_c4_text_joins_the_first_1100_documents_with_a_space(tmp_path):
    docs = write_c4(tmp_path)
    text = ppl_suite_text("c4", tmp_path)
    assert C4_DOCS == 1100
    assert text == " ".join(docs[:1100])
    assert "Document number 1099 " in text and "Document number 1100 " not in text


def test_c4_ids_keep_the_first_256_times_seqlen_tokens(tmp_path, tokenizer):
    write_c4(tmp_path)
    seqlen = 8
    full = torch.tensor(tokenizer(" ".join(
        f"Document number {i} says hello {i % 7} times." for i in range(1100)))["input_ids"])
    assert full.numel() > 256 * seqlen  # the cut matters in this test
    ids = suite_ids("c4", tokenizer, seqlen, tmp_path)
    assert C4_WINDOWS == 256 and suite_max_windows("c4") == 256
    assert ids.numel() == 256 * seqlen
    assert torch.equal(ids, full[: 256 * seqlen])
    # the generic evaluation path (CLI eval, prune --eval-ppl) applies the same cut
    assert torch.equal(eval_ids(tokenizer, "c4", seqlen, tmp_path), ids)


def test_the_original_c4_validation_shard_is_preferred(tmp_path):
    write_c4(tmp_path)
    orig = write_c4(tmp_path, n=1100, name="c4-validation.00000-of-00008.json.gz")
    assert find_suite_file("c4", tmp_path).name == "c4-validation.00000-of-00008.json.gz"
    assert ppl_suite_text("c4", tmp_path) == " ".join(orig)


def test_wikitext2_rows_are_joined_with_blank_lines_like_the_papers(tmp_path):
    lines = write_wiki(tmp_path)
    rows = ["" if not ln.strip() else ln for ln in lines]
    text = ppl_suite_text("wikitext2", tmp_path)
    assert text == "\n\n".join(rows)
    # the same string as evaluating the file itself, and no token cut for WikiText-2
    assert text == eval_text(str(tmp_path / "wikitext-2" / "wiki.test.raw"))
    assert eval_text("wikitext2", data_dir=tmp_path) == text
    assert suite_max_windows("wikitext2") is None


def test_join_documents_convention():
    assert join_documents("c4", ["a", "b"]) == "a b"
    assert join_documents("c4", [str(i) for i in range(2000)]).split(" ")[-1] == "1099"
    assert join_documents("wikitext2", ["x\n", "", "y\n"]) == "x\n\n\n\n\ny\n"
    assert set(SUITES) == {"wikitext2", "c4"}


def test_missing_suite_file_is_a_clear_error(tmp_path):
    with pytest.raises(EvaluationError, match="No data for the perplexity suite 'c4'"):
        ppl_suite_text("c4", tmp_path)
    with pytest.raises(EvaluationError, match="does not exist"):
        ppl_suite_text("wikitext2", tmp_path / "nope")
    with pytest.raises(EvaluationError, match="Unknown perplexity suite"):
        ppl_suite_text("ptb", tmp_path)


def test_hub_failure_without_local_copy_is_an_evaluation_error(monkeypatch):
    monkeypatch.setattr(ppl_suites, "default_data_dirs", lambda: [])

    def boom(*a, **k):
        raise ConnectionError("offline")

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(EvaluationError, match="Hugging Face hub"):
        suite_documents("c4")


def test_perplexity_on_a_suite(tmp_path, tokenizer, make_model):
    write_wiki(tmp_path)
    model = make_model("llama")
    ppl = perplexity(model, tokenizer, "wikitext2", seqlen=32, max_windows=3, data_dir=tmp_path)
    ppl_file = perplexity(model, tokenizer, str(tmp_path / "wikitext-2" / "wiki.test.raw"), seqlen=32,
                          max_windows=3)
    assert ppl == pytest.approx(ppl_file)


def test_cli_eval_with_suites_and_tasks_writes_a_report(tmp_path, tokenizer, make_model, capsys):
    from prunestudio.core.cli.commands import main

    data = tmp_path / "data"
    write_wiki(data)
    write_c4(data)
    (data / "piqa").mkdir()
    (data / "piqa" / "valid.jsonl").write_text(
        "".join(json.dumps({"goal": f"Goal {i}", "sol1": "do a", "sol2": "do b"}) + "\n" for i in range(4)))
    (data / "piqa" / "valid-labels.lst").write_text("0\n1\n0\n1\n")
    model_dir = tmp_path / "model"
    make_model("llama").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    report = tmp_path / "r.json"
    rc = main(["-q", "eval", "--model", str(model_dir), "--ppl", "wikitext2", "--ppl", "c4", "--seqlen", "16",
               "--max-windows", "2", "--tasks", "piqa", "--task-data", str(data), "--limit", "3",
               "--report", str(report)])
    assert rc == 0
    r = json.loads(report.read_text())
    assert set(r["ppl"]) == {"wikitext2", "c4"} and all(v > 1 for v in r["ppl"].values())
    assert r["tasks"]["piqa"]["n"] == 3 and set(r["tasks"]["piqa"]) == {"acc", "acc_norm", "n"}
    assert r["tasks_mean_acc"] == r["tasks"]["piqa"]["acc"]


def test_cli_eval_missing_task_file_is_a_clear_error(tmp_path, tokenizer, make_model, capsys):
    from prunestudio.core.cli.commands import main

    model_dir = tmp_path / "model"
    make_model("llama").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (tmp_path / "data").mkdir()
    rc = main(["eval", "--model", str(model_dir), "--tasks", "arc_easy", "--task-data", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "error: No data for the zero-shot task 'arc_easy'" in err
    assert "ARC-Easy-Test.jsonl" in err


@pytest.mark.shared_data("c4")  # skipped with its reason without it, failed in CI (tests/conftest.py)
def test_shared_data_suites():
    docs, where = suite_documents("c4", SHARED)
    assert len(docs) == 1100 and where.endswith("c4-en-validation-subset-2k.jsonl.gz")
    assert docs[0].startswith("We offer valet parking")
    wt = ppl_suite_text("wikitext2", SHARED)
    assert wt.startswith("\n\n = Robert Boulter = \n")


# ---- perplexity against a mean negative log-likelihood computed here from the logits ----------


def _reference_ppl(model, tokenizer, text: str, seqlen: int, max_windows: int | None = None) -> float:
    """exp(mean NLL of every next token) over the non-overlapping ``seqlen`` windows of ``text``,
    computed here with plain torch: each window alone through the model, log-softmax in float64,
    the log-probability of each actual next token (position t predicts token t + 1) picked out."""
    ids = tokenizer(text)["input_ids"]
    n = len(ids) // seqlen
    if max_windows:
        n = min(n, max_windows)
    total, count = 0.0, 0
    with torch.no_grad():
        for k in range(n):
            window = torch.tensor(ids[k * seqlen:(k + 1) * seqlen])
            logp = torch.log_softmax(model(input_ids=window[None]).logits[0].double(), dim=-1)
            total -= logp[torch.arange(seqlen - 1), window[1:]].sum().item()
            count += seqlen - 1
    assert count == n * (seqlen - 1)
    return float(torch.exp(torch.tensor(total / count, dtype=torch.float64)))


@pytest.mark.parametrize("seqlen, max_windows, batch_size", [(32, None, 4), (24, 5, 2), (50, 3, 4)])
def test_perplexity_is_exp_mean_nll_of_the_logits(tmp_path, tokenizer, make_model, seqlen, max_windows, batch_size):
    """core's perplexity (file reading, windows, batches) equals the reference computed from the
    model's logits on the string the papers tokenize (WikiText-style rows joined by blank lines)."""
    from conftest import CORPUS

    lines = [" = Heading = \n", " \n"] + [CORPUS[i:i + 90] + "\n" for i in range(0, len(CORPUS), 90)] * 3
    path = tmp_path / "eval.txt"
    path.write_text("".join(lines), encoding="utf-8")
    text = "\n\n".join("" if not ln.strip() else ln for ln in lines)
    model = make_model("llama")
    assert len(tokenizer(text)["input_ids"]) % seqlen  # a partial last window is dropped
    got = perplexity(model, tokenizer, str(path), seqlen=seqlen, batch_size=batch_size, max_windows=max_windows)
    want = _reference_ppl(model, tokenizer, text, seqlen, max_windows)
    assert got == pytest.approx(want, rel=1e-5)
    # not a number any model would give: a different model gives a different perplexity
    assert want != pytest.approx(_reference_ppl(make_model("llama", seed=1), tokenizer, text, seqlen, max_windows),
                                 rel=1e-3)


@pytest.mark.slow
def test_default_model_perplexity_is_exp_mean_nll_of_the_logits(demo_loaded, tmp_path):
    from conftest import CORPUS

    path = tmp_path / "eval.txt"
    path.write_text((CORPUS + "\n") * 12, encoding="utf-8")
    text = "\n\n".join([CORPUS + "\n"] * 12)
    model, tok = demo_loaded.model, demo_loaded.tokenizer
    got = perplexity(model, tok, str(path), seqlen=128, batch_size=2, max_windows=3)
    want = _reference_ppl(model, tok, text, 128, 3)
    assert 1 < want < 1000
    assert got == pytest.approx(want, rel=1e-4)
