"""Zero-shot multiple-choice task data: parsers for local task files and the hub fallback.

Every task becomes a list of :class:`MCItem`, one per question, already rendered into the
prompt format that lm-evaluation-harness uses for that task (``doc_to_text``, the target
delimiter ``" "`` and ``doc_to_choice``), so that scoring them by log-likelihood gives the
numbers lm-eval reports.

Local files are looked up in a data folder laid out like ``shared/data/eval``::

    arc/ARC-Easy-Test.jsonl, arc/ARC-Challenge-Test.jsonl      (AI2 ARC JSONL)
    piqa/valid.jsonl + piqa/valid-labels.lst                    (the authors' PIQA files)
    hellaswag/hellaswag_val.jsonl | hellaswag_val_subset1000.jsonl   (rowanz JSONL)
              | hellaswag_val_full.txt[.bz2]                     (6 lines per item)
    winogrande/winogrande.llm-foundry.jsonl | dev.jsonl          (partial-scoring / original)
    boolq/superglue-boolq-val.jsonl                             (SuperGLUE BoolQ)
    openbookqa/test.tsv | openbook_qa.llm-foundry.jsonl         (official TSV / llm-foundry)

The folder given may be that ``eval`` folder, its parent, or a task's own folder.
"""

from __future__ import annotations

import bz2
import csv
import itertools
import json
import re
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import EvaluationError

TASKS: tuple[str, ...] = (
    "arc_easy",
    "arc_challenge",
    "piqa",
    "hellaswag",
    "winogrande",
    "boolq",
    "openbookqa",
)

# Tasks for which lm-eval reports only ``acc``; their ``acc_norm`` is reported equal to ``acc``.
ACC_ONLY_TASKS: frozenset[str] = frozenset({"winogrande", "boolq"})

# lm-eval's default target delimiter between the context and each choice.
TARGET_DELIMITER = " "


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question, ready for log-likelihood scoring.

    ``contexts[i] + continuations[i]`` is the text for choice ``i``; only the continuation is
    scored. Most tasks repeat one context for every choice; WinoGrande varies the context and
    shares the continuation. ``norm_lengths[i]`` is what lm-eval divides the log-likelihood of
    choice ``i`` by for ``acc_norm``: the length in characters of the choice text *without*
    the target delimiter (``len(choice)`` in lm-eval's ``process_results``). When left empty
    it defaults to the length of each continuation.
    """

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int
    norm_lengths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.continuations)
        if n < 2 or len(self.contexts) != n:
            raise EvaluationError(
                f"A multiple-choice question needs one context per choice and at least two "
                f"choices (got {len(self.contexts)} contexts, {n} continuations)."
            )
        if not 0 <= self.gold < n:
            raise EvaluationError(f"The gold answer {self.gold} is not one of the {n} choices.")
        if not self.norm_lengths:
            object.__setattr__(self, "norm_lengths", tuple(len(c) for c in self.continuations))
        elif len(self.norm_lengths) != n:
            raise EvaluationError("A multiple-choice question needs one length per choice.")

    @property
    def num_choices(self) -> int:
        return len(self.continuations)


def _same_context(context: str, choices: Iterable[str], gold: int) -> MCItem:
    """The usual lm-eval shape: one context, each choice scored as ``" " + choice``."""
    choices = list(choices)
    return MCItem(
        contexts=(context,) * len(choices),
        continuations=tuple(TARGET_DELIMITER + c for c in choices),
        gold=gold,
        norm_lengths=tuple(len(c) for c in choices),
    )


# --------------------------------------------------------------------------------------------
# Per-task document -> MCItem (shared by the local files and the hub rows)
# --------------------------------------------------------------------------------------------


def arc_item(doc: dict[str, Any]) -> MCItem:
    """ARC, in AI2's schema (``question.stem``, ``question.choices``) or the hub's
    (``question``, ``choices.text``, ``choices.label``). Gold is the index of ``answerKey``
    among the labels, which may be ``A``-``E`` or ``1``-``5``."""
    q = doc["question"]
    if isinstance(q, dict):
        stem = q["stem"]
        texts = [c["text"] for c in q["choices"]]
        labels = [str(c["label"]) for c in q["choices"]]
    else:
        stem = q
        texts = list(doc["choices"]["text"])
        labels = [str(x) for x in doc["choices"]["label"]]
    key = str(doc["answerKey"]).strip()
    if key not in labels:
        raise ValueError(f"answerKey {key!r} is not one of the labels {labels}")
    return _same_context(f"Question: {stem}\nAnswer:", texts, labels.index(key))


def piqa_item(doc: dict[str, Any], label: int | None = None) -> MCItem:
    gold = int(doc["label"] if label is None else label)
    return _same_context(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], gold)


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag text clean-up (brackets are WikiHow artefacts)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_item(doc: dict[str, Any]) -> MCItem:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = hellaswag_preprocess(doc["activity_label"] + ": " + ctx)
    choices = [hellaswag_preprocess(e) for e in doc["endings"]]
    return _same_context(query, choices, int(doc["label"]))


def winogrande_item(doc: dict[str, Any]) -> MCItem:
    """WinoGrande with lm-eval's partial scoring: the context is the sentence up to the blank
    with each option filled in, the shared continuation is the text after the blank.

    Takes the original schema (``sentence``, ``option1``, ``option2``, ``answer`` "1"/"2")
    or llm-foundry's (``context_options``, ``continuation``, ``gold``).
    """
    if "context_options" in doc:
        contexts = [str(c) for c in doc["context_options"]]
        target = str(doc["continuation"]).strip()
        gold = int(doc["gold"])
    else:
        sentence = doc["sentence"]
        idx = sentence.index("_")
        contexts = [sentence[:idx] + doc["option1"], sentence[:idx] + doc["option2"]]
        target = sentence[idx + 1 :].strip()
        gold = {"1": 0, "2": 1}[str(doc["answer"]).strip()]
    cont = TARGET_DELIMITER + target
    return MCItem(
        contexts=tuple(contexts),
        continuations=(cont,) * len(contexts),
        gold=gold,
        # lm-eval's "choices" here are the filled-in contexts (acc_norm is not reported).
        norm_lengths=tuple(len(c) for c in contexts),
    )


def _boolq_label(label: Any) -> int:
    if isinstance(label, bool):
        return int(label)
    if isinstance(label, int):
        return label
    text = str(label).strip().lower()
    if text in ("true", "1", "yes"):
        return 1
    if text in ("false", "0", "no"):
        return 0
    raise ValueError(f"unknown BoolQ label {label!r}")


def boolq_item(doc: dict[str, Any]) -> MCItem:
    """BoolQ (SuperGLUE): ``"{passage}\\nQuestion: {question}?\\nAnswer:"``, choices no/yes."""
    label = doc["label"] if "label" in doc else doc["answer"]
    context = f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:"
    return _same_context(context, ["no", "yes"], _boolq_label(label))


def openbookqa_item(doc: dict[str, Any]) -> MCItem:
    """OpenBookQA from the hub schema (``question_stem``, ``choices``, ``answerKey``) or
    llm-foundry's (``query``, ``choices``, ``gold``)."""
    if "question_stem" in doc:
        labels = [str(x) for x in doc["choices"]["label"]]
        gold = labels.index(str(doc["answerKey"]).strip())
        return _same_context(doc["question_stem"], list(doc["choices"]["text"]), gold)
    return _same_context(doc["query"], list(doc["choices"]), int(doc["gold"]))


# --------------------------------------------------------------------------------------------
# Local file readers (generators of MCItem, so that ``limit`` stops reading early)
# --------------------------------------------------------------------------------------------


class _BadRow(Exception):
    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.where = where
        self.why = why


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _BadRow(f"line {lineno}", f"not valid JSON ({exc.msg})") from None
            except (ValueError, RecursionError) as exc:
                raise _BadRow(f"line {lineno}", f"not valid JSON ({str(exc)[:100]})") from None
            if not isinstance(row, dict):
                raise _BadRow(f"line {lineno}", "not a JSON object")
            yield lineno, row


def _from_jsonl(path: Path, make: Callable[[dict[str, Any]], MCItem]) -> Iterator[MCItem]:
    for lineno, row in _jsonl(path):
        try:
            yield make(row)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError, OverflowError) as exc:
            why = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise _BadRow(f"line {lineno}", why) from None
        except EvaluationError as exc:
            raise _BadRow(f"line {lineno}", exc.message) from None


def read_piqa(path: Path) -> Iterator[MCItem]:
    """``valid.jsonl`` with its labels in ``valid-labels.lst`` next to it (one 0/1 a line)."""
    labels_path = path.with_name(path.name.replace(".jsonl", "-labels.lst"))
    if not labels_path.is_file():
        raise _BadRow("labels", f"the label file {labels_path} is missing")
    labels = [ln.strip() for ln in labels_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    count = 0
    for lineno, row in _jsonl(path):
        if count >= len(labels):
            raise _BadRow("labels", f"{labels_path.name} has fewer labels than questions")
        try:
            item = piqa_item(row, int(labels[count]))
        except (KeyError, ValueError, TypeError) as exc:
            raise _BadRow(f"line {lineno}", f"bad PIQA row ({exc})") from None
        except EvaluationError as exc:
            raise _BadRow(f"line {lineno}", exc.message) from None
        count += 1
        yield item
    if count != len(labels):
        raise _BadRow("labels", f"{labels_path.name} has {len(labels)} labels for {count} questions")


def read_hellaswag_txt(path: Path) -> Iterator[MCItem]:
    """The llama.cpp HellaSwag text format: 6 lines per item (context, gold 0-3, 4 endings).

    The context is ``activity_label + ": " + ctx`` already cleaned, with ``ctx_b`` not
    capitalised, so results are close to lm-eval's but not identical.
    """
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        lines = (ln.rstrip("\r\n") for ln in fh)
        index = 0
        while True:
            block = list(itertools.islice(lines, 6))
            if not block or (len(block) == 1 and not block[0].strip()):
                return
            start = index * 6 + 1
            if len(block) < 6:
                raise _BadRow(f"line {start}", "the file ends inside an item (6 lines per item)")
            label = block[1].strip()
            if not label.isdecimal():
                raise _BadRow(f"line {start + 1}", f"expected the gold label 0-3, got {block[1]!r}")
            gold = int(label)
            choices = [hellaswag_preprocess(e) for e in block[2:]]
            try:
                yield _same_context(hellaswag_preprocess(block[0]), choices, gold)
            except EvaluationError as exc:
                raise _BadRow(f"line {start}", exc.message) from None
            index += 1


def read_openbookqa_tsv(path: Path) -> Iterator[MCItem]:
    """The official ``test.tsv``: ID, Question Stem, Choices "(A) … (B) … (C) … (D) …", …, Answer Key."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            return
        cols = {name.strip().lower(): i for i, name in enumerate(header)}
        try:
            i_stem, i_choices, i_key = cols["question stem"], cols["choices"], cols["answer key"]
        except KeyError:
            raise _BadRow("line 1", "expected the columns 'Question Stem', 'Choices' and 'Answer Key'") from None
        for lineno, row in enumerate(reader, 2):
            if not any(cell.strip() for cell in row):
                continue
            try:
                parts = re.split(r"\s*\(([A-Z])\)\s*", row[i_choices].strip())
                labels, texts = parts[1::2], [t.strip() for t in parts[2::2]]
                if parts[0].strip() or len(labels) < 2:
                    raise ValueError(f"cannot read the choices {row[i_choices]!r}")
                gold = labels.index(row[i_key].strip())
                yield _same_context(row[i_stem], texts, gold)
            except (IndexError, ValueError) as exc:
                raise _BadRow(f"line {lineno}", str(exc)) from None


# Per task: (sub-folder, [(file name, reader), ...] in order of preference).
_LOCAL: dict[str, tuple[str, list[tuple[str, Callable[[Path], Iterator[MCItem]]]]]] = {
    "arc_easy": ("arc", [("ARC-Easy-Test.jsonl", lambda p: _from_jsonl(p, arc_item))]),
    "arc_challenge": ("arc", [("ARC-Challenge-Test.jsonl", lambda p: _from_jsonl(p, arc_item))]),
    "piqa": ("piqa", [("valid.jsonl", read_piqa)]),
    "hellaswag": (
        "hellaswag",
        [
            ("hellaswag_val.jsonl", lambda p: _from_jsonl(p, hellaswag_item)),
            ("hellaswag_val_subset1000.jsonl", lambda p: _from_jsonl(p, hellaswag_item)),
            ("hellaswag_val_full.txt.bz2", read_hellaswag_txt),
            ("hellaswag_val_full.txt", read_hellaswag_txt),
        ],
    ),
    "winogrande": (
        "winogrande",
        [
            ("winogrande.llm-foundry.jsonl", lambda p: _from_jsonl(p, winogrande_item)),
            ("dev.jsonl", lambda p: _from_jsonl(p, winogrande_item)),
        ],
    ),
    "boolq": ("boolq", [("superglue-boolq-val.jsonl", lambda p: _from_jsonl(p, boolq_item))]),
    "openbookqa": (
        "openbookqa",
        [
            ("test.tsv", read_openbookqa_tsv),
            ("openbook_qa.llm-foundry.jsonl", lambda p: _from_jsonl(p, openbookqa_item)),
        ],
    ),
}

# Per task: (hub dataset, configuration, split, doc -> MCItem); the ones lm-eval uses.
_HUB: dict[str, tuple[str, str | None, str, Callable[[dict[str, Any]], MCItem]]] = {
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test", arc_item),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test", arc_item),
    "piqa": ("baber/piqa", None, "validation", piqa_item),
    "hellaswag": ("Rowan/hellaswag", None, "validation", hellaswag_item),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation", winogrande_item),
    "boolq": ("aps/super_glue", "boolq", "validation", boolq_item),
    "openbookqa": ("allenai/openbookqa", "main", "test", openbookqa_item),
}


def _check_name(name: str) -> None:
    if name not in TASKS:
        raise EvaluationError(
            f"Unknown zero-shot task '{name}'; the tasks are {', '.join(TASKS)}."
        )


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise EvaluationError(f"The item limit must be a whole number of at least 1 (got {limit!r}).")


# Local files that hold only part of their task (read when the whole task is not there, unless
# ``full`` is asked): HellaSwag's 1,000-item subset of the 10,042 validation items.
SUBSET_FILES: frozenset[str] = frozenset({"hellaswag_val_subset1000.jsonl"})


def find_task_file(name: str, data_dir: str | Path, full: bool = False) -> Path:
    """The local file that :func:`load_task` would read for ``name`` under ``data_dir``; with
    ``full``, never one of :data:`SUBSET_FILES` (the whole task, as the papers evaluate it)."""
    _check_name(name)
    base = Path(data_dir).expanduser()
    if not base.is_dir():
        raise EvaluationError(f"The evaluation data folder {base} does not exist.")
    sub, files = _LOCAL[name]
    if full:
        files = [f for f in files if f[0] not in SUBSET_FILES]
    folders = [base / sub, base / "eval" / sub, base]
    for filename, _reader in files:
        for folder in folders:
            if (folder / filename).is_file():
                return folder / filename
    expected = base / sub / files[0][0]
    others = [f for f, _ in files[1:]]
    alt = f" (or {', '.join(others)} in that folder)" if others else ""
    raise EvaluationError(
        f"No data for the zero-shot task '{name}': expected {expected}{alt}."
    )


def _load_local(name: str, data_dir: str | Path, limit: int | None, full: bool = False) -> list[MCItem]:
    path = find_task_file(name, data_dir, full)
    reader = dict(_LOCAL[name][1])[path.name]
    try:
        items = list(itertools.islice(reader(path), limit))
    except _BadRow as exc:
        raise EvaluationError(
            f"The {name} file {path} is malformed at {exc.where}: {exc.why}."
        ) from None
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise EvaluationError(
            f"The {name} file {path} could not be read ({exc.__class__.__name__}).",
            details=str(exc),
        ) from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
            RecursionError, csv.Error) as exc:  # junk the row parsers did not expect
        raise EvaluationError(
            f"The {name} file {path} is malformed ({exc.__class__.__name__}: {str(exc)[:200]}).",
            details=traceback.format_exc(),
        ) from None
    if not items:
        raise EvaluationError(f"The {name} file {path} holds no questions.")
    return items


def _load_hub(name: str, limit: int | None) -> list[MCItem]:
    path, config, split, make = _HUB[name]
    where = f"{path}" + (f" ({config})" if config else "")
    try:
        import datasets  # lazy: heavy import, and only the hub fallback needs it

        ds = datasets.load_dataset(path, config, split=split)
        rows = ds if limit is None else ds.select(range(min(limit, len(ds))))
        items = [make(dict(row)) for row in rows]
    except Exception as exc:  # offline, missing dataset, changed schema: one sentence
        raise EvaluationError(
            f"Could not get the {name} data set {where} from the Hugging Face hub "
            f"({exc.__class__.__name__}).",
            hint="Choose a folder of local task files instead.",
            details=traceback.format_exc(),
        ) from None
    if not items:
        raise EvaluationError(f"The {name} data set {where} from the hub holds no questions.")
    return items


def load_task(
    name: str, data_dir: str | Path | None = None, limit: int | None = None, full: bool = False
) -> list[MCItem]:
    """The questions of zero-shot task ``name`` (one of :data:`TASKS`), first ``limit`` only.

    With ``data_dir`` the task's file is read from that folder (see the module docstring);
    without it the data set lm-eval uses is fetched from the Hugging Face hub.
    Raises :class:`EvaluationError` for an unknown task, a missing or malformed file, or a
    hub download that fails. ``full``: never a local subset file (:data:`SUBSET_FILES`); the hub
    always has the whole task.
    """
    _check_name(name)
    _check_limit(limit)
    if data_dir is not None:
        return _load_local(name, data_dir, limit, full)
    return _load_hub(name, limit)
