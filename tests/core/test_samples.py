"""Dense against pruned text (core/evaluate/samples.py, core/run/samples.py) and the model card's
samples section (core/run/export.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import byte_tokenizer, tiny_model
from prunestudio.core.errors import Cancelled, ConfigError
from prunestudio.core.evaluate.samples import SampleProgress, SampleSettings, SampleWritten, iter_continue
from prunestudio.core.events import Message, PhaseStarted, run_to_completion
from prunestudio.core.model.loading import LoadedModel
from prunestudio.core.run.export import model_card
from prunestudio.core.run.load import LoadArgs
from prunestudio.core.run.samples import SampleComparison, SamplePair, iter_compare, samples_report

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer(300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_model("llama", vocab_size=len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _loaded(model, tok, name="tiny"):
    return LoadedModel(model, tok, name, name, None, torch.device("cpu"), torch.float32)


def _greedy_reference(model, ids, n, stop):
    """Greedy decoding with full forward passes (no cache), written here independently."""
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            seq.append(nxt)
            if nxt in stop:
                break
    return seq[len(ids):]


def test_greedy_continuation_is_the_argmax_sequence(tok):
    model = tiny_model("llama", vocab_size=len(tok), seed=3)
    s = SampleSettings(max_new_tokens=12)
    events = []
    w = run_to_completion(iter_continue(model, tok, PROMPT, s, "dense"), events.append)
    ids = tok(PROMPT)["input_ids"]
    ref = _greedy_reference(model, ids, 12, {2})
    assert w.text == tok.decode(ref, skip_special_tokens=True)
    assert w.tokens == len(ref) and w.which == "dense" and w.prompt == PROMPT
    assert isinstance(events[-1], SampleWritten)
    progress = [e for e in events if isinstance(e, SampleProgress)]
    assert progress and progress[0].done == 1 and progress[-1].total == 12


def test_the_same_seed_gives_the_same_text_and_another_seed_another(tok):
    model = tiny_model("llama", vocab_size=len(tok), seed=4)
    texts = [run_to_completion(iter_continue(model, tok, PROMPT, SampleSettings(24, temperature=1.0, seed=sd))).text
             for sd in (7, 7, 8)]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


def test_cancel_between_tokens(tok):
    model = tiny_model("llama", vocab_size=len(tok))
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        run_to_completion(iter_continue(model, tok, PROMPT, SampleSettings(40), should_stop=stop))


@pytest.mark.parametrize("kw", [dict(max_new_tokens=0), dict(temperature=-1), dict(top_p=0), dict(seed=1.5),
                                dict(repetition_penalty=0)])
def test_bad_settings_get_one_sentence(kw):
    with pytest.raises(ConfigError):
        SampleSettings(**kw)


def test_empty_prompt_is_refused(tok):
    with pytest.raises(ConfigError, match="prompt"):
        run_to_completion(iter_continue(tiny_model("llama", vocab_size=len(tok)), tok, "  ", SampleSettings()))


def test_compare_dense_in_memory_and_pruned(tok):
    dense = tiny_model("llama", vocab_size=len(tok), seed=0)
    pruned = tiny_model("llama", vocab_size=len(tok), seed=0)
    with torch.no_grad():  # "pruning": the smaller half of every block matrix's weights set to zero
        for name, p in pruned.named_parameters():
            if "layers" in name and p.dim() == 2:
                p[p.abs() < p.abs().quantile(0.5)] = 0
    s = SampleSettings(16)
    events = []
    comp = run_to_completion(iter_compare([PROMPT], s, _loaded(pruned, tok), _loaded(dense, tok)), events.append)
    ids = tok(PROMPT)["input_ids"]
    want = [tok.decode(_greedy_reference(m, ids, 16, {2}), skip_special_tokens=True) for m in (dense, pruned)]
    assert comp.pairs == (SamplePair(PROMPT, *want),)
    assert want[0] != want[1]  # the pruning changed the text, so the two columns are told apart
    assert comp.dense_from == "model"
    assert [e.which for e in events if isinstance(e, SampleWritten)] == ["pruned", "dense"]


def test_known_dense_text_is_not_written_again(tok):
    pruned = tiny_model("llama", vocab_size=len(tok), seed=1)
    comp = run_to_completion(iter_compare([PROMPT], SampleSettings(8), _loaded(pruned, tok),
                                          LoadArgs("/nonexistent/model", "cpu", "fp32"), {PROMPT: " known text"}))
    assert comp.pairs[0].dense == " known text" and comp.dense_from == "known"  # the missing folder never loaded


def test_compare_with_a_second_copy_loads_the_original_and_lets_it_go(tok, model_dir):
    from prunestudio.core.run.load import iter_load

    pruned = run_to_completion(iter_load(LoadArgs(str(model_dir), "cpu", "fp32")))
    reference = tok.decode(_greedy_reference(pruned.model, tok(PROMPT)["input_ids"], 10, {2}), skip_special_tokens=True)
    with torch.no_grad():
        for p in pruned.model.parameters():
            p.mul_(0.5)
    events = []
    comp = run_to_completion(iter_compare([PROMPT], SampleSettings(10), pruned,
                                          LoadArgs(str(model_dir), "cpu", "fp32")), events.append)
    assert comp.dense_from == "copy"
    assert comp.pairs[0].dense == reference  # the original weights, not the changed ones in memory
    assert any(isinstance(e, PhaseStarted) and e.phase == "load" for e in events)
    assert any(isinstance(e, Message) and "second copy" in e.text for e in events)


def test_card_has_a_samples_section_only_when_samples_were_generated():
    base = {"model": {"name": "tiny"}, "method": "wanda", "sparsity_target": 0.5, "structure": "unstructured"}
    assert "Samples" not in model_card(base)
    comp = SampleComparison(SampleSettings(64), (SamplePair("Hello", " world ``` end", " there"),
                                                 SamplePair("Only dense", " x", None)))
    report = dict(base, samples=samples_report(comp))
    card = model_card(report)
    assert "## Samples: dense and pruned" in card and "greedy, up to 64 new tokens" in card
    assert "*Dense model:*" in card and "*Pruned model:*" in card
    assert "````text\nHello world ``` end\n````" in card  # a fence longer than the text's backticks
    assert "Only dense" not in card  # a prompt without both texts is left out
    assert samples_report(SampleComparison(SampleSettings(), (SamplePair("a", None, " b"),))) is None
