"""The self-generation decoding loop after its speed-ups (issue 20) draws exactly the tokens the
loop before them drew, and its perplexities are a full forward's.

The reference below is the loop as it was before (whole-vocabulary repetition and suppression
masks, a growing ``DynamicCache``, ``log_softmax`` for the NLL), kept here so that every later
change is compared with it on tiny random models: same seeds -> the same tokens, bit for bit.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _selfgen_helpers import make_model, make_tokenizer  # noqa: E402
from prunestudio.core.calib import selfgen as sg  # noqa: E402
from prunestudio.core.calib.selfgen import sampler  # noqa: E402

WORDS = ("the quick brown fox jumps over the lazy dog a small model writes its own calibration text "
         "pruning removes weights that matter least for the output")


def _reference_sample_tokens(model, prompts, length, settings, seeds, suppress, pad_id, stop_ids=()):
    """The decoding loop before issue 20 (``core/calib/selfgen/sampler.py`` at 7778abd plus the
    stop tokens of the paper's protocol), as the reference for the tokens drawn."""
    bsz, lens = len(prompts), [len(p) for p in prompts]
    plen, steps = max(lens), length - min(lens)
    need = torch.tensor([length - n for n in lens])
    ids = torch.full((bsz, plen), int(pad_id), dtype=torch.long)
    mask = torch.zeros((bsz, plen), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, plen - len(p):] = torch.tensor(list(p))
        mask[b, plen - len(p):] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp_(min=0)
    uniforms = sampler._sample_uniforms(seeds, max(steps, 1))
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True)
        logits = out.logits.float()
        vocab = logits.shape[-1]
        sup = sg.prompts._suppress_mask(vocab, suppress, None, torch.device("cpu"))
        seen = torch.zeros((bsz, vocab))
        seen.scatter_add_(1, ids, mask.float())
        seen = seen > 0
        nll = torch.zeros(bsz, dtype=torch.float64)
        count = torch.zeros(bsz, dtype=torch.long)
        if plen > 1:
            lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            valid = (mask[:, :-1] * mask[:, 1:]).bool()
            nll -= torch.where(valid, lp, 0.0).sum(-1).double()
            count += valid.sum(-1)
        next_logits, past = logits[:, -1], sampler._output_cache(out)
        cache_kw = sampler._cache_kwarg(model)
        gen = torch.empty((bsz, steps), dtype=torch.long)
        rows = torch.arange(bsz)
        stops = sampler._stop_mask(stop_ids, vocab, torch.device("cpu"))
        ended = torch.zeros(bsz, dtype=torch.bool)
        last = steps - 1
        for s in range(steps):
            cand, probs = sampler._candidates(next_logits, seen, sup, settings.temperature, settings.top_k,
                                              settings.top_p, settings.repetition_penalty)
            tok = sampler._inverse_cdf(cand, probs, uniforms[:, s])
            active = s < need
            if stops is not None:
                active = active & ~ended
                stopping = active & stops[tok]
                ended |= stopping
                active = active & ~stopping
            lp = torch.log_softmax(next_logits, dim=-1)[rows, tok]
            nll -= torch.where(active, lp, 0.0).double()
            count += active.long()
            gen[:, s] = tok
            seen[rows, tok] = True
            if s == steps - 1:
                break
            if stops is not None and bool((ended | (need <= s + 1)).all()):
                last = s
                break
            mask = torch.cat([mask, mask.new_ones((bsz, 1))], dim=-1)
            position_ids = position_ids[:, -1:] + 1
            out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=position_ids,
                        use_cache=True, **{cache_kw: past})
            past, next_logits = sampler._output_cache(out), out.logits[:, -1].float()
    gen_list = gen[:, : last + 1].tolist()
    tokens = [list(p) + gen_list[b][: length - len(p)] for b, p in enumerate(prompts)]
    if stops is not None:
        stop_set = set(torch.nonzero(stops).flatten().tolist())
        tokens = [sampler._cut_at_stop(t, len(p), stop_set) for t, p in zip(tokens, prompts)]
    return tokens, torch.exp(nll / count.clamp(min=1).double()).tolist()


def _setup(arch: str, seed: int = 2):
    tok = make_tokenizer("gpt2" if arch in ("gpt2", "qwen2") else "llama")
    model = make_model(arch, tok, seed=seed, init=0.1)  # flat distributions: many candidates in play
    ids = tok(WORDS, add_special_tokens=False)["input_ids"]
    prompts = [ids[:1], ids[3:8], ids[10:13], ids[2:4], ids[5:6]]
    return model, tok, prompts


SETTINGS = [
    dict(),  # the product's defaults: temperature 0.6, top-p 0.95, top-k 50, penalty 1.2
    dict(temperature=1.5, top_k=0, top_p=1.0, repetition_penalty=1.0),
    dict(temperature=0.9, top_k=5, top_p=0.5, repetition_penalty=0.7),
]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "qwen2"])
@pytest.mark.parametrize("kw", SETTINGS)
def test_same_tokens_as_the_loop_before(arch, kw):
    model, tok, prompts = _setup(arch)
    st = sg.GenerationSettings(n=1, seqlen=28, **kw)
    sup = sg.suppressed_token_ids(model, tok)
    seeds = [sampler._sample_seed(7, i) for i in range(len(prompts))]
    for stop in ((), [tok.eos_token_id]):
        ref, ref_ppl = _reference_sample_tokens(model, prompts, 28, st, seeds, sup, tok.pad_token_id, stop)
        new, new_ppl = sg.sample_tokens(model, prompts, 28, st, seeds, suppress=sup, pad_id=tok.pad_token_id,
                                        stop_ids=stop)
        assert new == ref
        assert new_ppl == pytest.approx(ref_ppl, rel=1e-5)
    # and the tokens really depend on the sampling (the comparison above can fail)
    other, _ = sg.sample_tokens(model, prompts, 28, st, [s + 1 for s in seeds], suppress=sup,
                                pad_id=tok.pad_token_id)
    assert other != new


def test_candidates_from_history_are_bit_identical():
    g = torch.Generator().manual_seed(0)
    vocab = 3000
    for trial in range(60):
        logits = torch.randn(6, vocab, generator=g) * 3
        if trial % 2:
            logits = logits.round(decimals=1)  # many exact ties, before and after the temperature
        history = torch.randint(0, vocab, (6, 1 + trial % 30), generator=g)  # repeats included
        seen = torch.zeros(6, vocab, dtype=torch.bool).scatter_(1, history, True)
        sup_ids = torch.randint(0, vocab, (4,), generator=g)
        sup = torch.zeros(vocab, dtype=torch.bool)
        sup[sup_ids] = True
        for t, k, p, rp in [(0.6, 50, 0.95, 1.2), (1.0, 0, 1.0, 1.0), (1.3, 7, 0.5, 0.8), (0.6, 0, 0.9, 1.2)]:
            ref_idx, ref_probs = sampler._candidates(logits, seen, sup, t, k, p, rp)
            work = logits.clone()
            idx, probs = sampler._candidates_from_history(work, history, sup_ids, t, k, p, rp)
            assert torch.equal(idx, ref_idx)
            assert torch.equal(probs, ref_probs)


def test_preallocated_cache_reads_what_the_growing_cache_reads():
    model, tok, prompts = _setup("llama")
    ids = torch.tensor([prompts[1]])
    steps = torch.tensor([[5], [9], [3], [11]])
    logits = {}
    for prealloc in (False, True):
        with torch.inference_mode():
            out = model(input_ids=ids, use_cache=True)
            past = sampler._output_cache(out)
            if prealloc:
                past = sampler._preallocate(past, ids.shape[1] + 3)  # room for 3 of the 4 steps
                assert all(type(layer).__name__ == "_InPlaceLayer" for layer in past.layers)
            rows = []
            for i, t in enumerate(steps):
                out = model(input_ids=t[None], use_cache=True, **{sampler._cache_kwarg(model): past})
                past = sampler._output_cache(out)
                rows.append(out.logits[0, -1])
                assert past.get_seq_length() == ids.shape[1] + i + 1
            logits[prealloc] = torch.stack(rows)
    # the 4th step is past the capacity: the layer grows as a DynamicLayer would, results unchanged
    torch.testing.assert_close(logits[True], logits[False], rtol=0, atol=0)


def test_perplexities_equal_a_full_forward_with_padding():
    model, tok, prompts = _setup("llama", seed=3)
    st = sg.GenerationSettings(n=1, seqlen=20)
    sup = sg.suppressed_token_ids(model, tok)
    tokens, ppl = sg.sample_tokens(model, prompts, 20, st, list(range(len(prompts))), suppress=sup,
                                   pad_id=tok.pad_token_id)
    with torch.no_grad():
        for row, p in zip(tokens, ppl):
            x = torch.tensor([row])
            lp = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
            nll = -sum(lp[t - 1, row[t]].item() for t in range(1, len(row)))
            assert p == pytest.approx(math.exp(nll / (len(row) - 1)), rel=1e-5)


def test_batches_are_balanced_and_change_no_sample(monkeypatch):
    from prunestudio.core.calib.selfgen import generate

    tok = make_tokenizer("llama")
    model = make_model("llama", tok, seed=4)
    sizes: list[int] = []
    real = generate.iter_sample_tokens

    def spy(model, prompts, *args, **kwargs):
        sizes.append(len(prompts))
        return real(model, prompts, *args, **kwargs)

    monkeypatch.setattr(generate, "iter_sample_tokens", spy)
    st = sg.GenerationSettings(n=7, seqlen=12, batch_size=3, drop_top=0.0)
    balanced = sg.generate_calibration_set(model, tok, st)
    assert sizes == [2, 2, 3]  # not 3 + 3 + 1
    sizes.clear()
    one_by_one = sg.generate_calibration_set(model, tok, sg.GenerationSettings(n=7, seqlen=12, batch_size=1,
                                                                                drop_top=0.0))
    assert sizes == [1] * 7
    assert [s.input_ids for s in balanced.samples] == [s.input_ids for s in one_by_one.samples]
    assert [s.perplexity for s in balanced.samples] == pytest.approx([s.perplexity for s in one_by_one.samples],
                                                                     rel=1e-5)


def test_rows_that_end_leave_the_batch_and_change_no_token():
    """With stop tokens, rows that have ended leave the batch (and their cache rows): the forward
    passes shrink, and every row's tokens are still the reference loop's, which never drops one."""
    model, tok, _ = _setup("llama", seed=5)
    ids = tok(WORDS, add_special_tokens=False)["input_ids"]
    prompts = [ids[i:i + 1 + i % 3] for i in range(12)]
    st = sg.GenerationSettings(n=1, seqlen=40, temperature=1.5, top_k=0, top_p=1.0, repetition_penalty=1.0)
    sup = sg.suppressed_token_ids(model, tok)
    seeds = [sampler._sample_seed(3, i) for i in range(len(prompts))]
    stop = sorted(set(ids))[: len(set(ids)) // 2]  # half of the words end a sample: rows end at many steps
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, a, k: sizes.append(k["input_ids"].shape[0]), with_kwargs=True)
    try:
        new, new_ppl = sg.sample_tokens(model, prompts, 40, st, seeds, suppress=sup, pad_id=tok.pad_token_id,
                                        stop_ids=stop)
    finally:
        hook.remove()
    ref, ref_ppl = _reference_sample_tokens(model, prompts, 40, st, seeds, sup, tok.pad_token_id, stop)
    lengths = sorted(len(t) for t in new)
    assert lengths[0] < lengths[-1] and len(set(lengths)) >= 4  # rows really end at different steps
    assert sizes[0] == len(prompts) and min(sizes) < len(prompts) // 2  # and really leave the batch
    assert sizes == sorted(sizes, reverse=True)
    assert new == ref
    assert new_ppl == pytest.approx(ref_ppl, rel=1e-5)


@pytest.mark.parametrize("family", ["gemma3_text", "qwen3_next", "lfm2", "falcon_h1"])
def test_rows_leave_the_caches_of_sliding_linear_and_state_space_layers(family, monkeypatch):
    """Sliding-window, linear-attention, convolution and Mamba caches drop rows too (their own
    ``reorder_cache``), with the same tokens as a run that keeps every row to the end."""
    from _families import family_model

    model = family_model(family, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)  # peaked distributions: stop tokens are drawn early and at varied steps
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 300, (1 + i % 3,), generator=g).tolist() for i in range(12)]
    st = sg.GenerationSettings(n=1, seqlen=40, temperature=1.5, top_k=0, top_p=1.0, repetition_penalty=1.0)
    seeds = [sampler._sample_seed(1, i) for i in range(len(prompts))]
    stop = list(range(3, 40))
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, a, k: sizes.append(k["input_ids"].shape[0]), with_kwargs=True)
    try:
        new, new_ppl = sg.sample_tokens(model, prompts, 40, st, seeds, pad_id=0, stop_ids=stop)
    finally:
        hook.remove()
    assert min(sizes) < len(prompts) // 2
    monkeypatch.setattr(sampler, "_compactable", lambda past: False)
    whole, whole_ppl = sg.sample_tokens(model, prompts, 40, st, seeds, pad_id=0, stop_ids=stop)
    assert len({len(t) for t in whole}) >= 4
    assert new == whole
    assert new_ppl == pytest.approx(whole_ppl, rel=1e-5)


def test_a_static_cache_keeps_its_rows():
    from transformers import cache_utils

    assert not sampler._compactable(object())
    static = cache_utils.StaticCache(config=_setup("llama")[0].config, max_cache_len=8)
    assert not sampler._compactable(static)
    assert sampler._compactable(cache_utils.DynamicCache())
