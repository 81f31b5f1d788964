"""The zero-shot scorer's shared-prefix path (core/evaluate/loglikelihood.py): the choices of one
question run their shared beginning once, with its KV cache expanded to every choice. It must
give today's numbers (the plain path: one right-padded forward over whole rows) on tiny
random-init Llama, Qwen3 and Gemma 3 models in float32, and step aside where it cannot be exact."""

from __future__ import annotations

import pytest
import torch
from prunestudio.core.evaluate import loglikelihood
from prunestudio.core.evaluate.zeroshot import MCItem, encode_pairs, iter_evaluate_items, loglikelihoods
from prunestudio.core.events import PhaseStarted

try:
    from ._zeroshot_helpers import one_thread, tok  # noqa: F401 - module fixtures
except ImportError:
    from _zeroshot_helpers import one_thread, tok  # noqa: F401 - module fixtures




def _scaled(model):
    # Larger output weights than the default init so that the choices differ clearly, not so
    # large that float32 rounding of the sums approaches the 1e-5 tolerance.
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)
    return model.eval()


def make_llama(vocab):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return _scaled(LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False)))


def make_qwen3(vocab):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(1)
    return _scaled(Qwen3ForCausalLM(Qwen3Config(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=2048, tie_word_embeddings=False)))


def make_gemma3(vocab, window=512):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(2)
    return _scaled(Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=2048, sliding_window=window,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"])))


MODELS = {
    "llama": make_llama,
    "qwen3": make_qwen3,
    "gemma3": make_gemma3,
    # A window shorter than most rows: those batches must take the plain path.
    "gemma3_window8": lambda vocab: make_gemma3(vocab, window=8),
}

CTX_GAS = "Question: Which gas do plants take in from the air?\nAnswer:"
CTX_WATER = "Question: What is the boiling point of water?\nAnswer:"
ITEMS = [
    # Choices that share their first token(s): " carbon ..." twice.
    MCItem((CTX_GAS,) * 3, (" carbon dioxide", " carbon monoxide and more", " oxygen"), 0),
    MCItem((CTX_WATER,) * 3, (" one hundred degrees", " one", " a lot more words here"), 0),
    # WinoGrande: different contexts, one continuation; they share "The trophy ... the".
    MCItem(("The trophy did not fit in the suitcase because the trophy",
            "The trophy did not fit in the suitcase because the suitcase"), (" was too big.",) * 2, 0),
    # Single-token choices after one context: one row, nothing to share (plain path).
    MCItem(("Passage -- a passage.\nQuestion: is it true?\nAnswer:",) * 2, (" no", " yes"), 1),
    # Two-token choices of the same length: with a short maximum length the context is cut on
    # the left at the same place for both, and what is left is still shared.
    MCItem(("A man is sitting on a roof. He starts pulling up roofing. Then he",) * 2, (" yes no", " no yes"), 0),
]


def _requests(items):
    return [(c, x) for item in items for c, x in zip(item.contexts, item.continuations)]


def _groups(items):
    return [k for k, item in enumerate(items) for _ in range(item.num_choices)]


def _plain(monkeypatch, model, tok, requests, **kwargs):
    """Today's log-likelihoods: the plain path alone."""
    with monkeypatch.context() as m:
        m.setattr(loglikelihood, "_cache_argument", lambda model: None)
        return loglikelihoods(model, tok, requests, **kwargs)


class SharedSpy:
    """Counts the batches the shared path scored and the prefixes it shared."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[list[int], bool]] = []
        real = loglikelihood._score_shared

        def spy(model, rows, groups, *args, **kwargs):
            done = real(model, rows, groups, *args, **kwargs)
            self.calls.append(([shared for shared, _ in groups], done))
            return done

        monkeypatch.setattr(loglikelihood, "_score_shared", spy)

    @property
    def scored(self) -> int:
        return sum(done for _, done in self.calls)


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("batch_size", [1, 3, 16])
@pytest.mark.parametrize("max_length", [None, 12])
def test_shared_prefix_gives_todays_loglikelihoods(tok, monkeypatch, arch, batch_size, max_length):
    model = MODELS[arch](len(tok))
    requests = _requests(ITEMS)
    want = _plain(monkeypatch, model, tok, requests, batch_size=batch_size, max_length=max_length)
    spy = SharedSpy(monkeypatch)
    got = loglikelihoods(model, tok, requests, batch_size=batch_size, max_length=max_length,
                         groups=_groups(ITEMS))
    assert got == pytest.approx(want, abs=1e-5, rel=0)
    assert len(set(round(v, 2) for v in got)) > 8  # the model does tell the choices apart
    if arch == "gemma3_window8":
        assert spy.scored == 0  # every batch reaches beyond the 8-token window
    else:
        assert spy.scored >= 1
        if max_length is None:
            # Every question with several rows was shared, WinoGrande's on its common words.
            assert spy.scored == len(spy.calls)
            shared = sorted(s for calls, _ in spy.calls for s in calls)
            wino = encode_pairs(tok, [(ITEMS[2].contexts[0], ITEMS[2].continuations[0])])[0][0]
            assert len(wino) - 2 in shared  # all but the differing last word and the one before it
        else:
            # The truncated rows of the last question still share what is left of the context.
            truncated = [s for calls, done in spy.calls if done for s in calls]
            assert truncated and max(truncated) < 12


def test_shared_path_with_truncation_equals_brute_force(tok):
    model = make_llama(len(tok))
    item = ITEMS[-1]
    max_len = 8
    got = loglikelihoods(model, tok, _requests([item]), max_length=max_len, groups=[0, 0])
    for (c_enc, x_enc), value in zip(encode_pairs(tok, _requests([item])), got):
        whole = (c_enc + x_enc)[-(max_len + 1):]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([whole[:-1]])).logits[0].double(), -1)
        n = len(x_enc)
        want = sum(float(logp[len(whole) - 1 - n + k, x_enc[k]]) for k in range(n))
        assert value == pytest.approx(want, abs=1e-5)


def test_output_head_only_where_continuations_are_scored(tok):
    model = make_llama(len(tok))
    seen: list[tuple[dict, int]] = []

    def hook(module, args, kwargs, output):
        seen.append((dict(kwargs), output.logits.shape[1]))

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        loglikelihoods(model, tok, _requests(ITEMS[:2]), batch_size=8, groups=_groups(ITEMS[:2]))
    finally:
        handle.remove()
    longest_cont = max(len(x) for _, x in encode_pairs(tok, _requests(ITEMS[:2])))
    prefix_calls = [n for kw, n in seen if kw.get("use_cache")]
    cont_calls = [(kw, n) for kw, n in seen if kw.get("cache") is not None or kw.get("past_key_values") is not None]
    assert prefix_calls == [1]  # the contexts: one logit position per row, never used
    assert cont_calls and len(seen) == 1 + len(cont_calls)  # the remainders, in one or more parts
    for kw, n in cont_calls:
        assert n <= longest_cont < kw["input_ids"].shape[1] + kw["cache"].get_seq_length()


def test_tail_parts_are_the_cheapest_split():
    """The split of the remainders into parts against every split there is (brute force over the
    cut points): the least padded row-tokens plus the overhead per part."""
    import itertools

    from prunestudio.core.evaluate.loglikelihood import tail_parts

    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        n = 1 + trial % 9
        widths = sorted(torch.randint(1, 40, (n,), generator=g).tolist(), reverse=True)
        overhead = [0, 3, 16, 100][trial % 4]

        def cost(cuts):
            bounds = [0, *cuts, n]
            return sum((b - a) * widths[a] + overhead for a, b in zip(bounds, bounds[1:]))

        best = min(cost(c) for k in range(n) for c in itertools.combinations(range(1, n), k))
        parts = tail_parts(widths, overhead)
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert cost([a for a, _ in parts[1:]]) == best
    assert tail_parts([9, 9, 1, 1], float("inf")) == [(0, 4)]
    assert tail_parts([30, 2, 2, 2], 0) == [(0, 1), (1, 4)]


def test_remainders_in_parts_give_the_same_loglikelihoods(tok, monkeypatch):
    """Forcing a part per distinct remainder length (no overhead) and forbidding parts give the
    same numbers, and both the brute force's; the split really happens."""
    from prunestudio.core.evaluate import loglikelihood as ll

    model = make_llama(len(tok))
    requests, groups = _requests(ITEMS), _groups(ITEMS)
    calls: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda m, a, kw: calls.append(int(kw.get("cache") is not None)), with_kwargs=True)
    try:
        monkeypatch.setattr(ll, "_CPU_PART_OVERHEAD", 0)
        split = loglikelihoods(model, tok, requests, batch_size=8, groups=groups)
        parts = sum(calls)
        calls.clear()
        monkeypatch.setattr(ll, "_CPU_PART_OVERHEAD", float("inf"))
        whole = loglikelihoods(model, tok, requests, batch_size=8, groups=groups)
    finally:
        hook.remove()
    assert parts > sum(calls) >= 1
    assert split == pytest.approx(whole, abs=1e-5)
    monkeypatch.setattr(ll, "_cache_argument", lambda model: None)  # the plain path: whole rows
    plain = loglikelihoods(model, tok, requests, batch_size=8, groups=groups)
    assert split == pytest.approx(plain, abs=1e-5)


def test_a_cache_that_cannot_be_expanded_takes_the_plain_path(tok, monkeypatch):
    """A model returning a cache the scorer does not know (here a DynamicCache subclass, as a
    recurrent or offloading cache would be) is detected on the first batch: that batch and every
    later one are scored by the plain path, with today's numbers."""
    from transformers import DynamicCache

    class OtherCache(DynamicCache):
        pass

    model = make_llama(len(tok))
    real_forward = type(model).forward

    class OtherCacheLlama(type(model)):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                    labels=None, use_cache=None, logits_to_keep=0, **kwargs):
            out = real_forward(self, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache, inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                               logits_to_keep=logits_to_keep, **kwargs)
            if out.cache is not None:
                other = OtherCache()
                other.layers = out.cache.layers
                out.cache = other
            return out

    model.__class__ = OtherCacheLlama
    requests = _requests(ITEMS)
    want = _plain(monkeypatch, model, tok, requests, batch_size=3)
    spy = SharedSpy(monkeypatch)
    got = loglikelihoods(model, tok, requests, batch_size=3, groups=_groups(ITEMS))
    assert got == pytest.approx(want, abs=1e-5, rel=0)
    assert [done for _, done in spy.calls] == [False]  # tried once, then plain for good


def test_evaluate_items_shares_each_question(tok, monkeypatch):
    model = make_qwen3(len(tok))
    spy = SharedSpy(monkeypatch)
    gen = iter_evaluate_items(model, tok, "hand", ITEMS, batch_size=16)
    first = next(gen)
    assert isinstance(first, PhaseStarted)
    for _ in gen:
        pass
    # One shared batch (4 questions with several rows, 11 rows) and one plain (the yes/no row).
    assert first.total == 2 and spy.scored == 1 and len(spy.calls[0][0]) == 4


def test_bad_group_keys(tok):
    model = make_llama(len(tok))
    with pytest.raises(loglikelihood.EvaluationError, match="group keys"):
        loglikelihoods(model, tok, _requests(ITEMS[:1]), groups=[0])
