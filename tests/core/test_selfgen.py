"""Self-generated calibration data: determinism, filtering, lengths, prefixes, cancel, batching."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _selfgen_helpers import make_model, make_tokenizer  # noqa: E402
from prunestudio.core.calib import selfgen as sg  # noqa: E402
from prunestudio.core.calib.calibset import CalibrationSet  # noqa: E402
from prunestudio.core.calib.selfgen import generate, sampler  # noqa: E402
from prunestudio.core.errors import CalibrationError, Cancelled, ConfigError  # noqa: E402
from prunestudio.core.events import PhaseDone, PhaseProgress, PhaseStarted, run_to_completion  # noqa: E402

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "pruning removes weights that matter least",
    "one",  # shorter than 2 tokens: never used as a prefix
    "",
    "language models learn the statistics of their training data",
    "every sample must have the same number of tokens",
]


@pytest.fixture(scope="module")
def llama():
    tok = make_tokenizer("llama")
    return make_model("llama", tok), tok


@pytest.fixture(scope="module")
def gpt2():
    tok = make_tokenizer("gpt2")
    return make_model("gpt2", tok, seed=1), tok


def _settings(**kw):
    base = dict(n=6, seqlen=16, batch_size=4, seed=0)
    base.update(kw)
    return sg.GenerationSettings(**base)


def _ids(cs: CalibrationSet) -> list[list[int]]:
    return [s.input_ids for s in cs.samples]


def test_same_seed_same_set_and_different_seeds_differ(llama):
    model, tok = llama
    a = sg.generate_calibration_set(model, tok, _settings(seed=3))
    b = sg.generate_calibration_set(model, tok, _settings(seed=3))
    c = sg.generate_calibration_set(model, tok, _settings(seed=4))
    assert _ids(a) == _ids(b)
    assert [s.dropped for s in a.samples] == [s.dropped for s in b.samples]
    assert _ids(a) != _ids(c)
    # Samples within one set differ too (zero-data mode: same start token, own randomness).
    assert len({tuple(x) for x in _ids(a)}) == len(a.samples)


def test_sample_does_not_depend_on_batch_size(llama):
    model, tok = llama
    a = sg.generate_calibration_set(model, tok, _settings(batch_size=1))
    b = sg.generate_calibration_set(model, tok, _settings(batch_size=4))
    assert _ids(a) == _ids(b)


@pytest.mark.parametrize("fixture", ["llama", "gpt2"])
def test_exact_length_and_no_eos(fixture, request):
    model, tok = request.getfixturevalue(fixture)
    st = _settings(n=5, seqlen=24, batch_size=2, temperature=1.5, top_k=0, top_p=1.0)
    cs = sg.generate_calibration_set(model, tok, st)
    start = cs.settings["start_ids"]
    assert start == sg.document_start(tok)[0]
    forbidden = set(sg.suppressed_token_ids(model, tok)) | {tok.eos_token_id, tok.pad_token_id}
    assert cs.seqlen == 24
    for s in cs.samples:
        assert len(s.input_ids) == 24
        assert s.input_ids[: len(start)] == start
        assert not forbidden & set(s.input_ids[len(start):])
    if fixture == "llama":  # the start token is BOS, not EOS: no EOS anywhere
        assert all(tok.eos_token_id not in s.input_ids for s in cs.samples)
    assert cs.input_ids().shape == (len(cs), 24)


def test_drops_exactly_the_highest_perplexity_fraction(llama):
    model, tok = llama
    st = _settings(n=10, drop_top=0.3)
    events: list = []
    gen = sg.iter_generate(model, tok, st)
    cs = run_to_completion(gen, events.append)
    dropped = [s for s in cs.samples if s.dropped]
    kept = [s for s in cs.samples if not s.dropped]
    assert len(dropped) == 3 == st.num_dropped  # floor(10 * 0.3)
    assert len(cs) == 7
    assert min(s.perplexity for s in dropped) >= max(s.perplexity for s in kept)
    assert all(s.perplexity is not None and math.isfinite(s.perplexity) for s in cs.samples)
    assert all("in the highest 30%" in s.drop_reason for s in dropped)
    fd = [e for e in events if isinstance(e, sg.FilteringDone)]
    assert len(fd) == 1
    assert fd[0].dropped == tuple(i for i, s in enumerate(cs.samples) if s.dropped)
    assert fd[0].threshold == pytest.approx(max(s.perplexity for s in kept))
    gens = [e for e in events if isinstance(e, sg.SampleGenerated)]
    assert [e.index for e in gens] == list(range(10))
    assert [e.perplexity for e in gens] == [s.perplexity for s in cs.samples]
    assert [e.text for e in gens] == [s.text for s in cs.samples]
    phases = [(type(e).__name__, e.phase) for e in events if isinstance(e, (PhaseStarted, PhaseDone))]
    assert phases == [("PhaseStarted", "generate"), ("PhaseDone", "generate"),
                      ("PhaseStarted", "filter"), ("PhaseDone", "filter")]
    assert [e.done for e in events if isinstance(e, PhaseProgress) and e.phase == "generate"] == [3, 6, 10]


def test_floor_of_drop_fraction():
    assert sg.GenerationSettings(n=3, drop_top=0.2).num_dropped == 0
    assert sg.GenerationSettings(n=10, drop_top=0.2).num_dropped == 2
    assert sg.GenerationSettings(n=128, drop_top=0.2).num_dropped == 25
    assert sg.GenerationSettings(n=10, drop_top=0.0).num_dropped == 0


def test_save_and_load_roundtrip(llama, tmp_path):
    model, tok = llama
    cs = sg.generate_calibration_set(model, tok, _settings(), prefixes=TEXTS, source_name="mine.txt")
    path = cs.save(tmp_path / "set.jsonl")
    again = CalibrationSet.load(path, tokenizer=tok)
    assert _ids(again) == _ids(cs)
    assert [s.dropped for s in again.samples] == [s.dropped for s in cs.samples]
    assert again.sha256() == cs.sha256()
    assert again.source == "selfgen:mine.txt"
    assert again.settings["prefix_mode"] == "texts"
    assert again.settings["temperature"] == 0.6 and again.settings["seed"] == 0
    assert again.tokenizer_fingerprint == cs.tokenizer_fingerprint != ""


def test_zero_data_mode(gpt2):
    model, tok = gpt2
    cs = sg.generate_calibration_set(model, tok, _settings(n=4, seqlen=12))
    assert cs.source == "selfgen"
    assert cs.settings["prefix_mode"] == "none"
    assert cs.settings["start_token"] == "<|endoftext|>"
    assert cs.settings["start_token_rule"] == "endoftext"
    # a separator-trained model starts after a generic document end: ".\n\n" + <|endoftext|>
    start = [tok.convert_tokens_to_ids("."), tok.convert_tokens_to_ids("<|endoftext|>")]
    assert cs.settings["start_ids"] == start
    assert all(s.input_ids[:2] == start for s in cs.samples)
    assert all(s.text for s in cs.samples)


@pytest.mark.parametrize("fixture", ["llama", "gpt2"])
def test_prefix_mode_starts_with_text_prefixes(fixture, request):
    model, tok = request.getfixturevalue(fixture)
    st = _settings(n=8, seqlen=12, prefix_tokens=2)
    cs = sg.generate_calibration_set(model, tok, st, prefixes=iter(TEXTS))
    heads = {tuple(tok(t, add_special_tokens=False)["input_ids"][:2]) for t in TEXTS if len(t.split()) >= 2}
    # the document start: BOS (llama-style tokenizer adds it), else "." + <|endoftext|>
    bos = [tok.bos_token_id] if fixture == "llama" else [tok.convert_tokens_to_ids(t) for t in (".", "<|endoftext|>")]
    for s in cs.samples:
        assert s.input_ids[: len(bos)] == bos
        assert tuple(s.input_ids[len(bos): len(bos) + 2]) in heads
    used = {tuple(s.input_ids[len(bos): len(bos) + 2]) for s in cs.samples}
    assert used == heads  # 4 usable texts, 8 samples: every text is used (cycled)
    assert cs.settings["prefix_mode"] == "texts"
    # the choice of texts is deterministic in the seed
    again = sg.generate_calibration_set(model, tok, st, prefixes=iter(TEXTS))
    assert _ids(again) == _ids(cs)


def test_prefix_mode_without_usable_text(llama):
    model, tok = llama
    with pytest.raises(CalibrationError):
        sg.generate_calibration_set(model, tok, _settings(prefix_tokens=3), prefixes=["one", "two words"])


def test_cancel_between_batches(llama):
    model, tok = llama
    state = {"batches": 0}
    gen = sg.iter_generate(model, tok, _settings(n=8, batch_size=4), should_stop=lambda: state["batches"] >= 1)
    seen = []
    with pytest.raises(Cancelled):
        for ev in gen:
            if isinstance(ev, sg.SampleGenerated):
                seen.append(ev.index)
            if isinstance(ev, PhaseProgress) and ev.phase == "generate":
                state["batches"] += 1
    assert seen == [0, 1, 2, 3]


def test_cancel_between_decoding_steps(llama):
    model, tok = llama
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 5

    with pytest.raises(Cancelled):
        sg.generate_calibration_set(model, tok, _settings(n=4, seqlen=64, batch_size=4), should_stop=stop)
    assert calls["n"] == 6


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "qwen2"])
def test_left_padded_batch_equals_each_prompt_alone(arch):
    tok = make_tokenizer("gpt2" if arch in ("gpt2", "qwen2") else "llama")
    model = make_model(arch, tok, seed=2)
    st = sg.GenerationSettings(n=1, seqlen=14, top_k=1, repetition_penalty=1.2)
    words = [w for t in TEXTS for w in t.split()]
    ids = tok(" ".join(words), add_special_tokens=False)["input_ids"]
    prompts = [ids[:1], ids[3:8], ids[10:13], ids[20:22]]
    seeds = [11, 12, 13, 14]
    sup = sg.suppressed_token_ids(model, tok)
    batched, ppl_b = sg.sample_tokens(model, prompts, 14, st, seeds, suppress=sup, pad_id=tok.pad_token_id)
    for p, seed, row, pb in zip(prompts, seeds, batched, ppl_b):
        alone, ppl_a = sg.sample_tokens(model, [p], 14, st, [seed], suppress=sup, pad_id=tok.pad_token_id)
        assert row == alone[0]
        assert len(row) == 14 and row[: len(p)] == p
        assert pb == pytest.approx(ppl_a[0], rel=1e-4)
    # full sampling (temperature, top-k, top-p) with the same seeds is also batch-independent
    st2 = sg.GenerationSettings(n=1, seqlen=14)
    batched2, _ = sg.sample_tokens(model, prompts, 14, st2, seeds, suppress=sup, pad_id=tok.pad_token_id)
    for p, seed, row in zip(prompts, seeds, batched2):
        assert row == sg.sample_tokens(model, [p], 14, st2, [seed], suppress=sup, pad_id=tok.pad_token_id)[0][0]


def test_greedy_matches_transformers_generate(llama):
    """top_k=1 with a repetition penalty is HF's greedy search with the same penalty."""
    model, tok = llama
    st = sg.GenerationSettings(n=1, seqlen=20, top_k=1, repetition_penalty=1.3)
    prompt = tok("the quick brown", add_special_tokens=True)["input_ids"]
    sup = sg.suppressed_token_ids(model, tok)
    ours, _ = sg.sample_tokens(model, [prompt], 20, st, [0], suppress=sup, pad_id=tok.pad_token_id)
    with torch.inference_mode():
        ref = model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False, max_new_tokens=20 - len(prompt), repetition_penalty=1.3,
            suppress_tokens=sup, pad_token_id=tok.pad_token_id, top_k=None, top_p=None, temperature=None,
        )
    assert ours[0] == ref[0].tolist()


def test_candidates_match_hf_logits_processors():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    g = torch.Generator().manual_seed(0)
    vocab = 300
    logits = torch.randn(3, vocab, generator=g) * 3
    input_ids = torch.randint(0, vocab, (3, 12), generator=g)
    seen = torch.zeros(3, vocab, dtype=torch.bool)
    seen.scatter_(1, input_ids, True)
    suppress = torch.zeros(vocab, dtype=torch.bool)
    scores = RepetitionPenaltyLogitsProcessor(1.2)(input_ids, logits.clone())
    scores = TemperatureLogitsWarper(0.6)(input_ids, scores)
    scores = TopKLogitsWarper(50)(input_ids, scores)
    scores = TopPLogitsWarper(0.95)(input_ids, scores)
    ref = torch.softmax(scores, -1)
    idx, probs = sampler._candidates(logits, seen, suppress, 0.6, 50, 0.95, 1.2)
    ours = torch.zeros_like(ref).scatter(1, idx, probs)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_inverse_cdf_sampling_follows_the_distribution():
    idx = torch.tensor([[7, 3, 5]]).repeat(20000, 1)
    probs = torch.tensor([[0.5, 0.3, 0.2]]).repeat(20000, 1)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    draws = sampler._inverse_cdf(idx, probs, u)
    freq = [(draws == t).double().mean().item() for t in (7, 3, 5)]
    assert freq == pytest.approx([0.5, 0.3, 0.2], abs=0.02)
    # zero-probability candidates are never drawn, even at u -> 0 or 1
    z = sampler._inverse_cdf(torch.tensor([[1, 2, 3]] * 2), torch.tensor([[0.0, 1.0, 0.0]] * 2),
                        torch.tensor([0.0, 1.0 - 1e-12], dtype=torch.float64))
    assert z.tolist() == [2, 2]


def test_perplexities_equal_brute_force(llama):
    model, tok = llama
    cs = sg.generate_calibration_set(model, tok, _settings(n=5, seqlen=16, batch_size=3))
    ids = torch.tensor(_ids(cs))
    fast = sg.sample_perplexities(model, ids, batch_size=2)
    brute = []
    with torch.no_grad():
        for row in ids:
            logits = model(input_ids=row[None]).logits[0].double()
            nll = 0.0
            for t in range(1, len(row)):
                nll -= torch.log_softmax(logits[t - 1], -1)[row[t]].item()
            brute.append(math.exp(nll / (len(row) - 1)))
    assert fast == pytest.approx(brute, rel=1e-4)
    # the perplexities recorded while generating (from the decoding loop) agree
    assert [s.perplexity for s in cs.samples] == pytest.approx(brute, rel=1e-4)


@pytest.mark.parametrize(
    "kw",
    [dict(n=0), dict(seqlen=2, prefix_tokens=2), dict(drop_top=1.0), dict(drop_top=-0.1),
     dict(temperature=0), dict(top_p=0), dict(top_p=1.1), dict(top_k=-1), dict(repetition_penalty=0),
     dict(batch_size=0), dict(n=2.5)],
)
def test_invalid_settings_raise_config_error(kw):
    with pytest.raises(ConfigError):
        sg.GenerationSettings(**kw)


def test_seqlen_beyond_context_is_refused(llama):
    model, tok = llama
    with pytest.raises(ConfigError):
        sg.generate_calibration_set(model, tok, _settings(seqlen=1000))


def test_start_token_rule():
    llama_tok = make_tokenizer("llama")
    gpt2_tok = make_tokenizer("gpt2")
    assert sg.start_token(llama_tok) == (llama_tok.bos_token_id, "bos")
    eot = gpt2_tok.convert_tokens_to_ids("<|endoftext|>")
    assert sg.start_token(gpt2_tok) == (eot, "endoftext")
    assert sg.document_start(llama_tok) == ([llama_tok.bos_token_id], "bos")
    assert sg.document_start(gpt2_tok) == ([gpt2_tok.convert_tokens_to_ids("."), eot], "endoftext")


def _cache_bytes(cache) -> int:
    """Bytes of every tensor a KV cache object holds (walks its attributes and containers)."""
    seen, total, todo = set(), 0, [cache]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            total += obj.numel() * obj.element_size()
        elif isinstance(obj, (list, tuple)):
            todo.extend(obj)
        elif isinstance(obj, dict):
            todo.extend(obj.values())
        elif hasattr(obj, "__dict__"):
            todo.extend(vars(obj).values())
    return total


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "gemma", "phi3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_estimate_equals_the_cache_a_forward_builds(make_model, arch, dtype):
    from prunestudio.core.model.memory import kv_cache_bytes_per_token

    model = make_model(arch).to(dtype)
    tokens = 37
    with torch.inference_mode():
        out = model(input_ids=torch.randint(3, 90, (2, tokens)), use_cache=True)
    measured = _cache_bytes(out.past_key_values) / (2 * tokens)
    assert kv_cache_bytes_per_token(model.config, torch.finfo(dtype).bits // 8) == measured


def test_batch_shrinks_to_fit_memory_and_samples_stay_the_same(llama, monkeypatch):
    """With too little free memory for the KV cache of a full batch, fewer sequences are decoded
    at a time, the run says so, and every sample is what it would have been otherwise."""
    from prunestudio.core.model import memory
    from prunestudio.core.model.memory import kv_cache_bytes_per_token

    model, tok = llama
    st = _settings(n=6, seqlen=40, batch_size=6)
    full = sg.generate_calibration_set(model, tok, st)
    per_seq = kv_cache_bytes_per_token(model.config, 4) * st.seqlen + 4 * model.config.vocab_size * 4
    monkeypatch.setattr(memory, "available_memory",
                        lambda device="cpu": {"host_available": 4 * 2 * per_seq + 5, "device_free": None})
    assert sampler.fitting_batch(model, 6, st.seqlen, model.config.vocab_size) == 2
    events: list = []
    gen = sg.iter_generate(model, tok, st)
    small = run_to_completion(gen, events.append)
    notes = [e.detail for e in events if isinstance(e, PhaseProgress) and "would not fit" in e.detail]
    assert notes == ["2 samples at a time (batch size 6 would not fit in memory)"]
    assert _ids(small) == _ids(full)
    # arrivals come two by two: the effective batch was used
    arrivals = [e.index for e in events if isinstance(e, sg.SampleGenerated)]
    assert arrivals == list(range(6))
    # no memory figure at all: the requested batch
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": {"host_available": None})
    assert sampler.fitting_batch(model, 6, st.seqlen, model.config.vocab_size) == 6


def test_progress_inside_a_batch(llama, monkeypatch):
    """A batch being decoded reports its steps (at most every 0.5 s; here every step)."""
    model, tok = llama
    monkeypatch.setattr(generate, "_STEP_PROGRESS_SECONDS", 0.0)
    st = _settings(n=4, seqlen=12, batch_size=2)
    events = list(sg.iter_generate(model, tok, st))
    live = [e for e in events if isinstance(e, PhaseProgress) and e.detail.startswith("batch ")]
    start = len(sg.document_start(tok)[0])
    steps = st.seqlen - start
    assert len(live) == 2 * (steps - 1)  # every step but the last of each batch
    assert [e.detail.split(",")[0] for e in live[: steps - 1]] == [
        f"batch 1/2: token {i}/{steps}" for i in range(1, steps)]
    assert {e.done for e in live[: steps - 1]} == {0} and {e.done for e in live[steps - 1:]} == {2}


def test_text_being_written_grows_into_the_finished_sample(llama, monkeypatch):
    """The live preview shows the batch's first sample token by token, ending in the sample kept."""
    model, tok = llama
    monkeypatch.setattr(generate, "_STEP_PROGRESS_SECONDS", 0.0)
    st = _settings(n=4, seqlen=12, batch_size=2)
    gen = sg.iter_generate(model, tok, st)
    events: list = []
    cs = run_to_completion(gen, events.append)
    live = [e for e in events if isinstance(e, sg.SampleInProgress)]
    start = len(sg.document_start(tok)[0])
    steps = st.seqlen - start
    assert [e.index for e in live] == [0] * (steps - 1) + [2] * (steps - 1)
    assert [e.num_tokens for e in live[: steps - 1]] == list(range(start + 1, st.seqlen))
    assert {e.total_tokens for e in live} == {st.seqlen}
    for e in live:  # each is the finished sample's text up to where decoding was
        final = cs.samples[e.index].input_ids
        assert e.text == tok.decode(final[: e.num_tokens], skip_special_tokens=True)
    # it arrives before the batch's finished samples, never after
    first_done = next(i for i, e in enumerate(events) if isinstance(e, sg.SampleGenerated))
    assert all(events.index(e) < first_done for e in live[: steps - 1])


# ------------------------------------------------------------------------------------------------
# the paper's protocol (Ji et al., ICLR 2025): 2-token prefixes of real text, samples that may end
# at end-of-text, the highest-perplexity 20% dropped, the rest joined and cut into windows
# ------------------------------------------------------------------------------------------------
def _paper(**kw):
    base = dict(n=4, seqlen=16, batch_size=4, seed=0, protocol="paper")
    base.update(kw)
    return sg.GenerationSettings(**base)


class _FavourEos:
    """A forward hook on the LM head that adds ``bonus`` to the end-of-text logit, so that the
    tiny random models end their texts early (as real models do at the end of a document)."""

    def __init__(self, model, eos: int, bonus: float) -> None:
        self.handle = model.get_output_embeddings().register_forward_hook(self)
        self.eos, self.bonus = eos, bonus

    def __call__(self, module, inputs, out):
        out = out.clone()
        out[..., self.eos] += self.bonus
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _text_heads(tok, k: int = 2) -> set[tuple[int, ...]]:
    """The first k tokens of each usable text as the tokenizer encodes it (special tokens too)."""
    heads = set()
    for t in TEXTS:
        ids = tok(t)["input_ids"] if t.strip() else []
        if len(ids) >= k:
            heads.add(tuple(ids[:k]))
    return heads


@pytest.mark.parametrize("fixture", ["llama", "gpt2"])
def test_paper_protocol_prefixes_from_the_text_and_windows_cut_from_the_joined_samples(fixture, request):
    model, tok = request.getfixturevalue(fixture)
    eos = tok.eos_token_id
    with _FavourEos(model, eos, 4.0):
        cs = sg.generate_calibration_set(model, tok, _paper(), prefixes=iter(TEXTS), source_name="mine.txt")
    assert cs.settings["protocol"] == "paper" and cs.source == "selfgen:mine.txt"
    assert len(cs) == 4 and cs.input_ids().shape == (4, 16)
    docs = cs.settings["documents"]
    heads = _text_heads(tok)
    assert all(tuple(d["prefix"]) in heads for d in docs)
    # samples vary in length: some ended at end-of-text, before 16 tokens
    ended = [d for d in docs if d["ended_at_eos"]]
    assert ended and any(d["tokens"] < 16 for d in ended) and all(d["tokens"] <= 16 for d in docs)
    # floor(k * 20%) of the k samples used are dropped
    assert sum(d["dropped"] for d in docs) == math.floor(len(docs) * 0.2 + 1e-9) == cs.settings["drop_count"]
    # the windows are the kept samples joined in order and cut: each kept sample starts with its
    # prefix at its place in the joined stream, and an ended one ends with end-of-text there
    stream = [t for s in cs.samples for t in s.input_ids]
    pos = 0
    for d in (d for d in docs if not d["dropped"]):
        if pos + 2 <= len(stream):
            assert stream[pos: pos + 2] == d["prefix"]
        end = pos + d["tokens"]
        if d["ended_at_eos"] and end <= len(stream):
            assert stream[end - 1] == eos
        pos = end
    assert pos >= len(stream)  # the kept samples fill the windows (some tokens may be left over)
    # unlike the windows protocol, the windows do not all start with the same tokens
    assert len({tuple(s.input_ids[:2]) for s in cs.samples}) > 1


def test_paper_dropped_samples_have_the_highest_perplexity(llama):
    model, tok = llama
    with _FavourEos(model, tok.eos_token_id, 3.0):
        cs = sg.generate_calibration_set(model, tok, _paper(n=6, drop_top=0.3), prefixes=TEXTS)
    docs = cs.settings["documents"]
    dropped = [d["perplexity"] for d in docs if d["dropped"]]
    kept = [d["perplexity"] for d in docs if not d["dropped"]]
    assert len(dropped) == math.floor(len(docs) * 0.3 + 1e-9) >= 1
    assert min(dropped) >= max(kept) == pytest.approx(cs.settings["perplexity_threshold"])
    # k is the smallest number of samples whose kept ones fill the windows
    assert sum(d["tokens"] for d in docs if not d["dropped"]) >= 6 * 16
    fewer = docs[:-1]
    k = len(fewer)
    worst = sorted(range(k), key=lambda i: (-fewer[i]["perplexity"], i))[: math.floor(k * 0.3 + 1e-9)]
    assert sum(d["tokens"] for i, d in enumerate(fewer) if i not in worst) < 6 * 16


def test_paper_protocol_is_reproducible_per_sample(llama):
    model, tok = llama
    with _FavourEos(model, tok.eos_token_id, 3.0):
        a = sg.generate_calibration_set(model, tok, _paper(seed=5), prefixes=TEXTS)
        b = sg.generate_calibration_set(model, tok, _paper(seed=5, batch_size=1), prefixes=TEXTS)
        c = sg.generate_calibration_set(model, tok, _paper(seed=6), prefixes=TEXTS)
        a2 = sg.generate_calibration_set(model, tok, _paper(seed=5), prefixes=TEXTS)
    assert _ids(a2) == _ids(a) and a2.settings == a.settings  # same seed, same set, exactly
    assert _ids(a) == _ids(b)  # the same samples, whatever the batch (perplexities up to float rounding)
    same = [{k: v for k, v in d.items() if k != "perplexity"} for d in a.settings["documents"]]
    assert same == [{k: v for k, v in d.items() if k != "perplexity"} for d in b.settings["documents"]]
    assert [d["perplexity"] for d in a.settings["documents"]] == pytest.approx(
        [d["perplexity"] for d in b.settings["documents"]], rel=1e-4)
    assert _ids(a) != _ids(c)


def test_a_sample_that_ends_at_eos_is_scored_without_it(llama):
    """The sampler's perplexity of a sample that ended is the text's: a plain forward pass over
    its tokens without the end-of-text token gives the same number."""
    model, tok = llama
    eos = tok.eos_token_id
    st = _paper(temperature=1.5, top_k=0, top_p=1.0)
    prompts = [tok("the quick")["input_ids"][:2]] * 6
    with _FavourEos(model, eos, 4.0):
        toks, ppl = sg.sample_tokens(model, prompts, 16, st, list(range(6)), stop_ids=[eos])
        ended = [(t, p) for t, p in zip(toks, ppl) if t[-1] == eos]
        assert ended, "the bonus makes some sample end"
        for t, p in ended:
            assert eos not in t[:-1] and len(t) <= 16
            assert p == pytest.approx(generate.sample_perplexities(model, torch.tensor([t[:-1]]))[0], rel=1e-4)


def test_paper_protocol_needs_prefix_texts_and_windows_protocol_is_recorded(gpt2):
    model, tok = gpt2
    with pytest.raises(ConfigError, match="prefix source"):
        sg.generate_calibration_set(model, tok, _paper())
    with pytest.raises(ConfigError):
        sg.GenerationSettings(protocol="other")
    cs = sg.generate_calibration_set(model, tok, _settings(n=2, seqlen=12))
    assert cs.settings["protocol"] == "windows"


def test_paper_set_keeps_its_provenance_when_saved(gpt2, tmp_path):
    model, tok = gpt2
    cs = sg.generate_calibration_set(model, tok, _paper(n=2), prefixes=TEXTS, source_name="mine.txt")
    again = CalibrationSet.load(cs.save(tmp_path / "set.jsonl"), tokenizer=tok)
    assert again.settings["protocol"] == "paper" and again.provenance()["settings"]["protocol"] == "paper"
    assert again.settings["documents"] == cs.settings["documents"] and _ids(again) == _ids(cs)


def test_paper_protocol_refuses_a_model_that_never_writes_enough(gpt2, monkeypatch):
    from prunestudio.core.calib.selfgen import paper

    model, tok = gpt2
    monkeypatch.setattr(paper, "MAX_SAMPLES_PER_WINDOW", 1)
    with _FavourEos(model, tok.eos_token_id, 50.0), pytest.raises(CalibrationError, match="ends its texts"):
        sg.generate_calibration_set(model, tok, _paper(n=2), prefixes=TEXTS)


def test_end_of_text_includes_the_document_separator():
    """An instruct tokenizer's EOS ends a chat turn; a plain text ends at <|endoftext|>: both end a
    paper-protocol sample."""
    from prunestudio.core.calib.selfgen.prompts import end_of_text_ids

    tok = make_tokenizer("gpt2")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    model = make_model("gpt2", tok, seed=1)
    ids = end_of_text_ids(model, tok)
    assert tok.convert_tokens_to_ids("<|im_end|>") in ids and tok.convert_tokens_to_ids("<|endoftext|>") in ids
    llama_tok = make_tokenizer("llama")
    assert end_of_text_ids(make_model("llama", llama_tok), llama_tok) == [llama_tok.eos_token_id]


def test_a_later_paper_batch_writes_only_what_is_missing(llama, monkeypatch):
    """After the first batch, the next one is sized from the samples written so far (the tokens
    still missing at their mean length, with a margin), not the full batch; the set is the one a
    batch of 1 gives, sample for sample."""
    from prunestudio.core.calib.selfgen import paper

    model, tok = llama
    sizes: list[int] = []
    real = paper.iter_sample_tokens

    def spy(model, prompts, *args, **kwargs):
        sizes.append(len(prompts))
        return real(model, prompts, *args, **kwargs)

    monkeypatch.setattr(paper, "iter_sample_tokens", spy)
    monkeypatch.setattr(paper, "NEXT_BATCH_MIN", 1)
    with _FavourEos(model, tok.eos_token_id, 3.0):
        big = sg.generate_calibration_set(model, tok, _paper(n=6, batch_size=16), prefixes=TEXTS)
        used = len(big.settings["documents"])
        assert sizes[0] == 16 < used  # the first batch is not enough (19 samples are needed) ...
        assert len(sizes) >= 2 and max(sizes[1:]) < 16 and sum(sizes) < 32  # ... the second is smaller
        sizes.clear()
        one = sg.generate_calibration_set(model, tok, _paper(n=6, batch_size=1), prefixes=TEXTS)
    assert sizes == [1] * used
    assert _ids(big) == _ids(one)


def test_next_batch_size_estimates_the_missing_samples():
    from prunestudio.core.calib.selfgen.paper import NEXT_BATCH_MIN, next_batch_size

    assert next_batch_size([], [], 0.2, 1000, 80) == 80
    # 10 samples of 50 tokens, 2 dropped: 400 kept of 1000; 40 per sample after the drop -> 15 missing
    lengths, ppls = [50] * 10, [float(i) for i in range(10)]
    assert next_batch_size(lengths, ppls, 0.2, 1000, 80) == math.ceil(15 * 1.5)
    assert next_batch_size(lengths, ppls, 0.2, 1000, 16) == 16
    assert next_batch_size(lengths, ppls, 0.2, 420, 80) == NEXT_BATCH_MIN
