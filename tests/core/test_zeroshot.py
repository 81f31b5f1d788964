"""Tests of the built-in zero-shot multiple-choice evaluator (core/evaluate/zeroshot.py, core/evaluate/task_data.py)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from prunestudio.core.errors import Cancelled, EvaluationError
from prunestudio.core.evaluate import task_data as tasks_mod
from prunestudio.core.evaluate.zeroshot import (
    TASKS,
    MCItem,
    TaskResult,
    encode_pairs,
    evaluate_with_lm_eval,
    evaluate_zeroshot,
    iter_evaluate_items,
    iter_loglikelihoods,
    iter_zeroshot,
    lm_eval_available,
    load_task,
    loglikelihoods,
    score_items,
)
from prunestudio.core.events import Message, PhaseDone, PhaseProgress, PhaseStarted

try:
    from ._zeroshot_helpers import DATA_EVAL, BigramLM, brute_loglik, make_llama
    from ._zeroshot_helpers import one_thread, tok  # noqa: F401 - module fixtures
except ImportError:
    from _zeroshot_helpers import DATA_EVAL, BigramLM, brute_loglik, make_llama
    from _zeroshot_helpers import one_thread, tok  # noqa: F401 - module fixtures

# skipped with its reason without ../shared/data/eval, failed in CI (tests/conftest.py)
needs_data = pytest.mark.shared_data("eval")




@pytest.fixture(scope="module")
def llama(tok):
    return make_llama(len(tok))


def drain(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


# ---------------------------------------------------------------------------------------------
# Tokenisation and log-likelihoods
# ---------------------------------------------------------------------------------------------


def test_encode_pairs_splits_the_lm_eval_way(tok):
    ctx, cont = "Question: Which gas?\nAnswer:", " carbon dioxide"
    (c_enc, x_enc), (c2, x2) = encode_pairs(tok, [(ctx, cont), (ctx + " ", "carbon dioxide")])
    assert c_enc == tok(ctx)["input_ids"]
    assert c_enc + x_enc == tok(ctx + cont)["input_ids"]
    # The trailing space of a context moves to the continuation: same split as above.
    assert (c2, x2) == (c_enc, x_enc)
    # An empty context becomes the EOS token (this tokenizer has no BOS).
    ((c3, x3),) = encode_pairs(tok, [("", " yes")])
    assert c3 == [tok.eos_token_id] and x3 == tok.encode(" yes")


REQUESTS = [
    ("Question: Which gas do plants take in from the air?\nAnswer:", " carbon dioxide"),
    ("Question: Which gas do plants take in from the air?\nAnswer:", " oxygen and a lot more words here"),
    ("Question: What is the boiling point of water?\nAnswer:", " one hundred degrees"),
    ("A man", " is sitting on a roof."),
    ("The trophy did not fit in the suitcase because the trophy", " was too big."),
    ("The trophy did not fit in the suitcase because the suitcase", " was too big."),
    ("x", " y"),
    # Same model input as REQUESTS[3] but a shorter continuation: they share one row.
    ("A man is", " sitting on a roof."),
    ("Passage -- a passage.\nQuestion: is it true?\nAnswer:", " no"),
    ("Passage -- a passage.\nQuestion: is it true?\nAnswer:", " yes"),
]


@pytest.fixture(scope="module")
def brute(tok, llama):
    return [brute_loglik(llama, tok, c, x) for c, x in REQUESTS]


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_loglikelihoods_equal_brute_force_single_forward(tok, llama, brute, batch_size):
    got = loglikelihoods(llama, tok, REQUESTS, batch_size=batch_size)
    assert got == pytest.approx(brute, abs=1e-4)
    assert len(set(round(v, 3) for v in got)) > 5  # the model does tell them apart


def test_loglikelihoods_model_without_logits_to_keep(tok):
    model = BigramLM(len(tok))
    torch.manual_seed(1)
    with torch.no_grad():
        model.table.normal_()
    got = loglikelihoods(model, tok, REQUESTS, batch_size=4)
    want = [brute_loglik(model, tok, c, x) for c, x in REQUESTS]
    assert got == pytest.approx(want, abs=1e-4)


def test_single_token_choices_share_one_forward_row(tok, llama):
    ctx = REQUESTS[-1][0]
    assert REQUESTS[-1] == (ctx, " yes")
    assert len(tok.encode(" no")) == len(tok.encode(" yes")) == 1
    gen = iter_loglikelihoods(llama, tok, [(ctx, " no"), (ctx, " yes")], batch_size=1)
    events, got = drain(gen)
    assert events[0].total == 1  # one row holds both requests
    assert got == pytest.approx([brute_loglik(llama, tok, ctx, " no"), brute_loglik(llama, tok, ctx, " yes")], abs=1e-4)
    # Continuations of different lengths after the same model input share a row too.
    pair = [REQUESTS[3], REQUESTS[-3]]
    events, got = drain(iter_loglikelihoods(llama, tok, pair, batch_size=1))
    assert events[0].total == 1
    assert got == pytest.approx([brute_loglik(llama, tok, c, x) for c, x in pair], abs=1e-4)


def test_left_truncation_to_max_length(tok, llama):
    ctx, cont = REQUESTS[0]
    (c_enc, x_enc), = encode_pairs(tok, [(ctx, cont)])
    max_len = len(x_enc) + 4
    (got,) = loglikelihoods(llama, tok, [(ctx, cont)], max_length=max_len)
    whole = (c_enc + x_enc)[-(max_len + 1):]
    with torch.no_grad():
        logp = torch.log_softmax(llama(input_ids=torch.tensor([whole[:-1]])).logits[0].double(), -1)
    n = len(x_enc)
    want = sum(float(logp[len(whole) - 1 - n + k, x_enc[k]]) for k in range(n))
    assert got == pytest.approx(want, abs=1e-4)


def test_model_mode_is_restored(tok, llama):
    llama.train()
    try:
        loglikelihoods(llama, tok, REQUESTS[:2])
        assert llama.training
    finally:
        llama.eval()


def test_bad_batch_size(tok, llama):
    with pytest.raises(EvaluationError):
        loglikelihoods(llama, tok, REQUESTS, batch_size=0)


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def _same_ctx(ctx, choices, gold):
    return MCItem(
        contexts=(ctx,) * len(choices),
        continuations=tuple(" " + c for c in choices),
        gold=gold,
        norm_lengths=tuple(len(c) for c in choices),
    )


HAND_ITEMS = [
    _same_ctx("Question: Which gas do plants take in?\nAnswer:", ["carbon dioxide", "helium", "neon light"], 0),
    _same_ctx("Question: Where does the man sit?\nAnswer:", ["in a jar", "on a roof", "under water"], 1),
    _same_ctx("Passage -- about boiling.\nQuestion: is water wet?\nAnswer:", ["no", "yes"], 1),
    # WinoGrande-style partial scoring: the contexts differ, the continuation is shared.
    MCItem(
        contexts=(
            "The trophy did not fit in the suitcase because the trophy",
            "The trophy did not fit in the suitcase because the suitcase",
        ),
        continuations=(" was too big.", " was too big."),
        gold=0,
    ),
]


def _memorising_model(tok, items, pick):
    """A bigram table that has memorised, for each item, the choice ``pick(item)``."""
    model = BigramLM(len(tok))
    for item in items:
        k = pick(item)
        ((c_enc, x_enc),) = encode_pairs(tok, [(item.contexts[k], item.continuations[k])])
        model.memorise(c_enc + x_enc)
    return model


def test_known_answers_are_found(tok):
    model = _memorising_model(tok, HAND_ITEMS, lambda item: item.gold)
    events, result = drain(iter_evaluate_items(model, tok, "hand", HAND_ITEMS, batch_size=3))
    assert result == TaskResult("hand", acc=1.0, acc_norm=1.0, n=len(HAND_ITEMS))
    # ... and a model that memorised a wrong answer everywhere gets them all wrong.
    wrong = _memorising_model(tok, HAND_ITEMS, lambda item: 1 - item.gold if item.gold < 2 else 0)
    _, result = drain(iter_evaluate_items(wrong, tok, "hand", HAND_ITEMS, batch_size=3))
    assert result.acc == 0.0 and result.acc_norm == 0.0


def test_score_items_definitions():
    item = _same_ctx("q", ["a", "much longer answer"], 1)  # lengths 1 and 18
    # Summed: choice 0 wins (-2 > -9); per character: choice 1 wins (-0.5 > -2).
    assert score_items([item], [[-2.0, -9.0]]) == (0.0, 1.0)
    assert score_items([item], [[-2.0, -9.0]], acc_only=True) == (0.0, 0.0)
    # Ties go to the first choice, as numpy.argmax does.
    assert score_items([item], [[-1.0, -1.0]])[0] == 0.0


def test_acc_and_acc_norm_match_brute_force(tok, llama):
    items = list(HAND_ITEMS[:3])
    items += [
        _same_ctx("A man is sitting on a roof. He", ["starts pulling up roofing.", "eats.", "is a jar of hot water and more"], 2),
        _same_ctx("How do I open a jar?", ["Run the lid under hot water.", "Twist.", "Eat it"], 0),
    ]
    _, result = drain(iter_evaluate_items(llama, tok, "hand", items, batch_size=4))
    hits = hits_norm = 0
    for item in items:
        lls = [brute_loglik(llama, tok, c, x) for c, x in zip(item.contexts, item.continuations)]
        hits += max(range(len(lls)), key=lambda i: (lls[i], -i)) == item.gold
        normed = [ll / len(x.removeprefix(" ")) for ll, x in zip(lls, item.continuations)]
        hits_norm += max(range(len(lls)), key=lambda i: (normed[i], -i)) == item.gold
    assert result.acc == hits / len(items)
    assert result.acc_norm == hits_norm / len(items)


def test_task_result_to_dict():
    r = TaskResult("piqa", acc=0.5, acc_norm=0.75, n=4)
    assert r.to_dict() == {"acc": 0.5, "acc_norm": 0.75, "n": 4}


def test_mcitem_validation():
    with pytest.raises(EvaluationError):
        MCItem(contexts=("a", "b"), continuations=(" x", " y"), gold=2)
    with pytest.raises(EvaluationError):
        MCItem(contexts=("a",), continuations=(" x", " y"), gold=0)
    assert MCItem(("a", "a"), (" xy", " z"), 0).norm_lengths == (3, 2)


# ---------------------------------------------------------------------------------------------
# Events and cancellation
# ---------------------------------------------------------------------------------------------


def test_events_and_result(tok, llama):
    # 30 requests but 9 distinct model inputs: repeats, and " no"/" yes" after one context,
    # share a row. The three questions with several rows (3, 3 and 2 rows) run on their shared
    # prefix, a batch each (3 + 3 > 3 rows); the one-row question takes the plain path -> 4.
    items = HAND_ITEMS * 3
    events, result = drain(iter_evaluate_items(llama, tok, "hand", items, batch_size=3))
    assert isinstance(events[0], PhaseStarted) and events[0].phase == "evaluate:hand"
    assert events[0].total == 4
    progress = [e for e in events if isinstance(e, PhaseProgress)]
    assert [p.done for p in progress] == [1, 2, 3, 4] and all(p.total == 4 for p in progress)
    assert isinstance(events[-1], PhaseDone) and len(events) == 6
    assert result.n == len(items)


def test_cancel_raises_between_batches(tok, llama):
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 2

    gen = iter_evaluate_items(llama, tok, "hand", HAND_ITEMS * 3, batch_size=4, should_stop=should_stop)
    with pytest.raises(Cancelled):
        drain(gen)
    assert not torch.is_inference_mode_enabled()


# ---------------------------------------------------------------------------------------------
# Task files
# ---------------------------------------------------------------------------------------------

EXPECTED_COUNTS = {
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "piqa": 1838,
    "hellaswag": 1000,
    "winogrande": 1267,
    "boolq": 3270,
    "openbookqa": 500,
}


@needs_data
@pytest.mark.parametrize("name", TASKS)
def test_local_files_parse_to_the_right_counts(name):
    items = load_task(name, DATA_EVAL)
    assert len(items) == EXPECTED_COUNTS[name]
    assert all(0 <= it.gold < it.num_choices for it in items)


@needs_data
def test_gold_distributions():
    golds = lambda name: Counter(it.gold for it in load_task(name, DATA_EVAL))  # noqa: E731
    assert golds("winogrande") == {0: 628, 1: 639}
    assert golds("boolq") == {1: 2033, 0: 1237}
    full = list(tasks_mod.read_hellaswag_txt(DATA_EVAL / "hellaswag" / "hellaswag_val_full.txt.bz2"))
    assert len(full) == 10042
    assert Counter(it.gold for it in full) == {0: 2515, 1: 2485, 2: 2584, 3: 2458}
    assert full[0].contexts[0] == "Roof shingle removal: A man is sitting on a roof. he"
    assert full[0].gold == 3


@needs_data
def test_data_dir_may_be_the_parent_and_limit_applies():
    items = load_task("piqa", DATA_EVAL.parent, limit=5)
    assert len(items) == 5
    assert items[0].contexts[0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    labels = (DATA_EVAL / "piqa" / "valid-labels.lst").read_text().split()[:5]
    assert [it.gold for it in items] == [int(x) for x in labels]


@needs_data
@pytest.mark.parametrize("name,file,counts", [
    ("arc_easy", "ARC-Easy-Test.jsonl", {3: 7, 5: 4}),
    ("arc_challenge", "ARC-Challenge-Test.jsonl", {3: 4, 5: 3}),
])
def test_arc_numeric_labels_and_choice_counts(name, file, counts):
    items = load_task(name, DATA_EVAL)
    rows = [json.loads(line) for line in (DATA_EVAL / "arc" / file).open(encoding="utf-8")]
    numeric = 0
    for row, item in zip(rows, items, strict=True):
        labels = [c["label"] for c in row["question"]["choices"]]
        assert item.gold == labels.index(row["answerKey"])
        assert item.continuations == tuple(" " + c["text"] for c in row["question"]["choices"])
        if labels[0] == "1":
            numeric += 1
            assert item.gold == int(row["answerKey"]) - 1
    assert numeric == {"arc_easy": 97, "arc_challenge": 22}[name]
    sizes = Counter(it.num_choices for it in items)
    assert {k: v for k, v in sizes.items() if k != 4} == counts


def test_arc_item_formats():
    ai2 = {"question": {"stem": "Why?", "choices": [{"text": t, "label": str(i + 1)} for i, t in enumerate("abcde")]},
           "answerKey": "5"}
    item = tasks_mod.arc_item(ai2)
    assert item.gold == 4 and item.contexts[0] == "Question: Why?\nAnswer:" and item.continuations[4] == " e"
    hub = {"question": "Why?", "choices": {"text": ["x", "y", "z"], "label": ["A", "B", "C"]}, "answerKey": "C"}
    assert tasks_mod.arc_item(hub).gold == 2


def test_hellaswag_preprocessing_as_lm_eval():
    doc = {"activity_label": "Making a cake", "ctx_a": "[header] How to bake. [title] Preheat the oven.",
           "ctx_b": "you", "label": "2",
           "endings": ["mix. [step] Stir.", "b", "c  d", "d"]}
    item = tasks_mod.hellaswag_item(doc)
    assert item.contexts[0] == "Making a cake: How to bake.. Preheat the oven. You"
    assert item.continuations == (" mix. Stir.", " b", " c d", " d")
    assert item.gold == 2 and item.norm_lengths == (10, 1, 3, 1)


@needs_data
def test_hellaswag_subset_first_item():
    item = load_task("hellaswag", DATA_EVAL, limit=1)[0]
    assert item.contexts[0].startswith("Pole vault: Pole vault is a sport")
    assert item.contexts[0].endswith("swing your body. A few women")
    assert item.gold == 3


@needs_data
def test_winogrande_partial_scoring_format():
    item = load_task("winogrande", DATA_EVAL, limit=1)[0]
    assert item.contexts == ("Sarah was a much better surgeon than Maria so Sarah",
                             "Sarah was a much better surgeon than Maria so Maria")
    assert item.continuations == (" always got the easier cases.",) * 2
    assert item.gold == 1
    original = {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
                "option1": "Sarah", "option2": "Maria", "answer": "2"}
    assert tasks_mod.winogrande_item(original) == item


@needs_data
def test_boolq_prompt_and_labels():
    item = load_task("boolq", DATA_EVAL, limit=1)[0]
    row = json.loads((DATA_EVAL / "boolq" / "superglue-boolq-val.jsonl").open().readline())
    assert item.contexts[0] == f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
    assert item.continuations == (" no", " yes")
    assert item.gold == {"false": 0, "true": 1}[row["label"]]


@needs_data
def test_openbookqa_tsv_matches_llm_foundry():
    tsv = list(tasks_mod.read_openbookqa_tsv(DATA_EVAL / "openbookqa" / "test.tsv"))
    foundry = [tasks_mod.openbookqa_item(json.loads(line))
               for line in (DATA_EVAL / "openbookqa" / "openbook_qa.llm-foundry.jsonl").open(encoding="utf-8")]
    assert tsv == foundry and len(tsv) == 500


def test_missing_task_file_names_task_and_path(tmp_path):
    (tmp_path / "piqa").mkdir()
    with pytest.raises(EvaluationError) as err:
        load_task("arc_easy", tmp_path)
    msg = str(err.value)
    assert "arc_easy" in msg and str(tmp_path / "arc" / "ARC-Easy-Test.jsonl") in msg
    # PIQA without its labels file
    (tmp_path / "piqa" / "valid.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    with pytest.raises(EvaluationError, match="valid-labels.lst"):
        load_task("piqa", tmp_path)
    with pytest.raises(EvaluationError, match="does not exist"):
        load_task("piqa", tmp_path / "nowhere")


def test_malformed_file_gives_line_number(tmp_path):
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "superglue-boolq-val.jsonl").write_text(
        '{"question": "q", "passage": "p", "label": "true"}\n{"question": "q"\n'
    )
    with pytest.raises(EvaluationError, match="line 2"):
        load_task("boolq", tmp_path)


def test_unknown_task_and_bad_limit(tmp_path):
    with pytest.raises(EvaluationError, match="Unknown zero-shot task 'mmlu'"):
        load_task("mmlu", tmp_path)
    with pytest.raises(EvaluationError, match="Unknown"):
        evaluate_zeroshot(None, None, ["arc_easy", "nope"], data_dir=tmp_path)
    with pytest.raises(EvaluationError, match="limit"):
        load_task("piqa", tmp_path, limit=0)


def test_hub_failure_is_one_clear_sentence(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'baber/piqa' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(EvaluationError) as err:
        load_task("piqa")
    msg = str(err.value)
    assert "piqa" in msg and "baber/piqa" in msg and "Traceback" not in msg and "\n" not in msg
    assert "ConnectionError" in err.value.details


def test_hub_rows_are_mapped(monkeypatch, tok):
    import datasets

    rows = [{"sentence": "A _ b.", "option1": "x", "option2": "y", "answer": "1"}] * 3

    class FakeDS(list):
        def select(self, idx):
            return FakeDS(self[i] for i in idx)

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: FakeDS(rows))
    items = load_task("winogrande", limit=2)
    assert len(items) == 2 and items[0].contexts == ("A x", "A y") and items[0].continuations[0] == " b."
    events, results = drain(iter_zeroshot(BigramLM(len(tok)), tok, ["winogrande"], limit=2))
    assert isinstance(events[0], Message) and "hub" in events[0].text
    assert results["winogrande"].n == 2


# ---------------------------------------------------------------------------------------------
# End to end on the real files with a tiny model
# ---------------------------------------------------------------------------------------------


@needs_data
def test_every_task_end_to_end(tok, llama):
    events, results = drain(iter_zeroshot(llama, tok, TASKS, data_dir=DATA_EVAL, limit=2, batch_size=8))
    assert list(results) == list(TASKS)
    for name, r in results.items():
        assert r.n == 2 and 0.0 <= r.acc <= 1.0 and 0.0 <= r.acc_norm <= 1.0
        if name in ("winogrande", "boolq"):
            assert r.acc_norm == r.acc
    started = [e.phase for e in events if isinstance(e, PhaseStarted)]
    assert started == [f"evaluate:{t}" for t in TASKS]


@needs_data
def test_missing_file_fails_before_any_compute(tmp_path, tok, llama):
    (tmp_path / "piqa").mkdir()
    for f in ("valid.jsonl", "valid-labels.lst"):
        (tmp_path / "piqa" / f).write_bytes((DATA_EVAL / "piqa" / f).read_bytes())
    gen = iter_zeroshot(llama, tok, ["piqa", "boolq"], data_dir=tmp_path, limit=2)
    with pytest.raises(EvaluationError, match="boolq"):
        next(gen)


def _lm_eval_local_arc_easy(folder, rows):
    """lm-eval's own ``arc_easy`` task (its prompt, target and choices, taken by ``include`` from
    the installed harness), reading ``rows`` in the hub's schema from a local JSONL file instead
    of the hub."""
    import os

    import lm_eval

    data = folder / "arc_easy_test.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for row in rows:
            q = row["question"]
            f.write(json.dumps({"id": row["id"], "question": q["stem"], "answerKey": row["answerKey"],
                                "choices": {"text": [c["text"] for c in q["choices"]],
                                            "label": [c["label"] for c in q["choices"]]}}) + "\n")
    builtin = os.path.join(os.path.dirname(lm_eval.__file__), "tasks", "arc", "arc_easy.yaml")
    (folder / "arc_easy_local.yaml").write_text(
        f"include: {json.dumps(builtin)}\n"
        "task: arc_easy\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "training_split: null\n"
        "validation_split: null\n"
        "test_split: test\n", encoding="utf-8")


@needs_data
def test_agrees_with_lm_eval(tok, llama, tmp_path, monkeypatch):
    """The same 20 ARC-Easy questions scored by our evaluator and by lm-evaluation-harness itself
    (its own task definition and HFLM scoring, run offline on the local file): the same
    log-likelihood for every choice, the same accuracies. Also runs ``evaluate_with_lm_eval``."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    assert lm_eval_available()  # the dev extra installs it (pyproject.toml)
    limit = 20
    rows = [json.loads(line) for line in (DATA_EVAL / "arc" / "ARC-Easy-Test.jsonl").open(encoding="utf-8")][:limit]
    _lm_eval_local_arc_easy(tmp_path, rows)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    original = lm_eval.simple_evaluate
    runs = []

    def offline(*args, **kwargs):  # the harness with the local task and its per-item results
        out = original(*args, task_manager=manager, log_samples=True, **kwargs)
        runs.append(out)
        return out

    monkeypatch.setattr(lm_eval, "simple_evaluate", offline)
    theirs = evaluate_with_lm_eval(llama, tok, ["arc_easy"], limit=limit, batch_size=8)
    assert len(runs) == 1
    ours = evaluate_zeroshot(llama, tok, ["arc_easy"], data_dir=DATA_EVAL, limit=limit, batch_size=8)
    assert ours["arc_easy"].n == theirs["arc_easy"].n == limit

    # per item and choice, the log-likelihoods agree
    items = load_task("arc_easy", DATA_EVAL, limit=limit)
    samples = sorted(runs[0]["samples"]["arc_easy"], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(limit))
    for item, sample in zip(items, samples, strict=True):
        assert sample["target"] == item.gold
        their_ll = [float(r[0][0]) for r in sample["resps"]]
        mine = loglikelihoods(llama, tok, list(zip(item.contexts, item.continuations)), batch_size=8)
        assert mine == pytest.approx(their_ll, rel=1e-5, abs=1e-4)  # fp32, other batch shapes
    assert ours["arc_easy"].acc == pytest.approx(theirs["arc_easy"].acc)
    assert ours["arc_easy"].acc_norm == pytest.approx(theirs["arc_easy"].acc_norm)
