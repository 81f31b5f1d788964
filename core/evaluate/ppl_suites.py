"""Named perplexity suites with the convention of the pruning papers (SparseGPT, Wanda).

* ``wikitext2``: the WikiText-2 raw **test** split; the rows are joined with ``"\\n\\n"`` and the
  whole string is tokenized (SparseGPT/Wanda ``get_wikitext2``).
* ``c4``: the C4 ``en`` **validation** set; the first 1,100 documents are joined with ``" "``,
  tokenized, and only the first ``256 * seqlen`` tokens are kept (SparseGPT/Wanda ``get_c4``:
  ``valenc = tokenizer(' '.join(valdata[:1100]['text']))``, ``valenc[:, :256 * seqlen]``).
  Cutting the token stream there is the same as evaluating at most 256 windows, which is what
  :data:`SUITES` records (``max_windows``).

Both are read from local files when a data folder is known, otherwise from the Hugging Face hub:

* an explicit ``data_dir``; else the folder in ``PRUNESTUDIO_EVAL_DATA``; else ``shared/data`` next
  to the repository checkout, when it exists;
* in that folder: ``wikitext-2/wiki.test.raw`` (or ``wiki.test.raw``) and
  ``c4/c4-validation.00000-of-00008.json.gz`` (the file the papers use) or, failing that,
  ``c4/c4-en-validation-subset-2k.jsonl.gz`` (2,000 C4-en validation documents; not proven to be the
  first 2,000 of that shard, so C4 numbers from it are close to, not identical with, the papers').

The suite names shadow the calibration presets of the same name in perplexity evaluation only:
``--ppl c4`` is the C4 *validation* suite, never the training shard used for calibration.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import EvaluationError

C4_DOCS = 1100
C4_WINDOWS = 256


@dataclass(frozen=True)
class PplSuite:
    name: str
    label: str
    hub: tuple[str, str | None, str, str | None]
    """(dataset, config, split, data_files) on the Hugging Face hub."""
    local: tuple[str, ...]
    """Candidate files relative to the data folder, in order of preference."""
    joiner: str
    max_docs: int | None
    max_windows: int | None
    """Windows kept at most (the 256 * seqlen token cut of the C4 convention)."""


SUITES: dict[str, PplSuite] = {
    "wikitext2": PplSuite(
        "wikitext2", "WikiText-2 (test)", ("Salesforce/wikitext", "wikitext-2-raw-v1", "test", None),
        ("wikitext-2/wiki.test.raw", "wiki.test.raw", "wikitext-2-raw/wiki.test.raw"),
        "\n\n", None, None),
    "c4": PplSuite(
        "c4", "C4 (en, validation)",
        ("allenai/c4", None, "validation", "en/c4-validation.00000-of-00008.json.gz"),
        ("c4/c4-validation.00000-of-00008.json.gz", "c4-validation.00000-of-00008.json.gz",
         "c4/c4-en-validation-subset-2k.jsonl.gz", "c4-en-validation-subset-2k.jsonl.gz"),
        " ", C4_DOCS, C4_WINDOWS),
}


def is_suite(name: str) -> bool:
    return name in SUITES


def suite_max_windows(name: str) -> int | None:
    """At most this many ``seqlen`` windows are evaluated for suite ``name`` (None: all)."""
    return SUITES[name].max_windows if name in SUITES else None


def default_data_dirs() -> list[Path]:
    dirs = []
    env = os.environ.get("PRUNESTUDIO_EVAL_DATA")
    if env:
        dirs.append(Path(env).expanduser())
    repo_shared = Path(__file__).resolve().parents[3] / "shared" / "data"
    dirs.append(repo_shared)
    return [d for d in dirs if d.is_dir()]


def find_suite_file(name: str, data_dir: str | os.PathLike) -> Path:
    suite = _suite(name)
    base = Path(data_dir).expanduser()
    if not base.is_dir():
        raise EvaluationError(f"The evaluation data folder {base} does not exist.")
    for rel in suite.local:
        if (base / rel).is_file():
            return base / rel
    raise EvaluationError(
        f"No data for the perplexity suite '{name}' in {base}: expected {base / suite.local[0]}"
        f" (or {', '.join(suite.local[1:])}).")


def _suite(name: str) -> PplSuite:
    if name not in SUITES:
        raise EvaluationError(f"Unknown perplexity suite '{name}'; the suites are {', '.join(SUITES)}.")
    return SUITES[name]


def join_documents(name: str, docs: list[str]) -> str:
    """The evaluation string of suite ``name`` from its documents (rows), by the convention."""
    suite = _suite(name)
    if suite.max_docs is not None:
        docs = docs[: suite.max_docs]
    return suite.joiner.join(docs)


def _read_wikitext_rows(path: Path) -> list[str]:
    # The HF rows: each line is a row (newline kept), whitespace-only lines are empty rows.
    with open(path, encoding="utf-8", errors="strict") as f:
        return ["" if not line.strip() else line for line in f]


def _read_jsonl_texts(path: Path, limit: int | None) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    out: list[str] = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            out.append(json.loads(line)["text"])
            if limit is not None and len(out) >= limit:
                break
    return out


def suite_documents(name: str, data_dir: str | os.PathLike | None = None) -> tuple[list[str], str]:
    """(documents, where they came from) of suite ``name``; see the module docstring."""
    suite = _suite(name)
    dirs = [Path(data_dir)] if data_dir is not None else default_data_dirs()
    if data_dir is not None:
        path = find_suite_file(name, data_dir)
    else:
        path = None
        for d in dirs:
            try:
                path = find_suite_file(name, d)
                break
            except EvaluationError:
                continue
    if path is not None:
        try:
            if name == "wikitext2":
                return _read_wikitext_rows(path), str(path)
            return _read_jsonl_texts(path, suite.max_docs), str(path)
        except (OSError, UnicodeDecodeError, EOFError, ValueError, KeyError) as e:
            raise EvaluationError(f"Could not read {path} for the perplexity suite '{name}': {e}") from e
    return _hub_documents(suite), f"hf:{suite.hub[0]}"


def _hub_documents(suite: PplSuite) -> list[str]:
    dataset, config, split, data_files = suite.hub
    try:
        import datasets

        kw = {"split": split}
        if data_files:
            kw["data_files"] = {split: data_files}
        ds = datasets.load_dataset(dataset, config, **kw)
        n = len(ds) if suite.max_docs is None else min(suite.max_docs, len(ds))
        return list(ds.select(range(n))["text"])
    except Exception as e:  # offline, renamed, gated ...
        raise EvaluationError(
            f"Could not get the {suite.label} perplexity set from the Hugging Face hub ({type(e).__name__}) "
            "and no local copy was found.",
            hint="Pass a data folder holding wikitext-2/wiki.test.raw and c4/*.jsonl.gz "
                 "(or set PRUNESTUDIO_EVAL_DATA).",
            details=str(e)) from None


def ppl_suite_text(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """The single string tokenized for suite ``name`` (``wikitext2`` or ``c4``)."""
    docs, _ = suite_documents(name, data_dir)
    text = join_documents(name, docs)
    if not text.strip():
        raise EvaluationError(f"The perplexity suite '{name}' holds no text.")
    return text


def suite_ids(name: str, tokenizer, seqlen: int, data_dir: str | os.PathLike | None = None):
    """Token ids of suite ``name``, cut to ``max_windows * seqlen`` tokens where the convention says so."""
    import torch

    ids = torch.tensor(tokenizer(ppl_suite_text(name, data_dir))["input_ids"], dtype=torch.long)
    mw = suite_max_windows(name)
    return ids[: mw * seqlen] if mw else ids
