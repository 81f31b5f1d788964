"""The chunked output head of core/evaluate/perplexity.py: the same perplexity as the model's own
logits on several architectures (softcapping, logit scales, tied and untied heads), and the model's
own logits whenever the model does something to its head's output the chunked path does not know."""

from __future__ import annotations

import pytest
import torch
from prunestudio.core.errors import Cancelled
from prunestudio.core.evaluate import perplexity as ppl_mod
from prunestudio.core.evaluate.perplexity import NllScorer, iter_perplexity
from prunestudio.core.events import PhaseProgress, run_to_completion

VOCAB = 300
SEQLEN = 24


def _config(arch: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "llama":
        return tf.LlamaConfig(**common)
    if arch == "llama_tied":
        return tf.LlamaConfig(tie_word_embeddings=True, **common)
    if arch == "qwen2":
        return tf.Qwen2Config(**common)
    if arch == "qwen3":
        return tf.Qwen3Config(head_dim=16, **common)
    if arch == "gemma2":  # tied head; a cap small enough that tanh bends tiny random logits
        return tf.Gemma2Config(head_dim=16, final_logit_softcapping=0.05, sliding_window=16, **common)
    if arch == "cohere":
        return tf.CohereConfig(logit_scale=3.0, tie_word_embeddings=False, **common)
    if arch == "granite":
        return tf.GraniteConfig(logits_scaling=0.25, **common)
    raise AssertionError(arch)


ARCHS = ("llama", "llama_tied", "qwen2", "qwen3", "gemma2", "cohere", "granite")


def _model(arch: str, dtype: torch.dtype = torch.float32, cls=None, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = _config(arch)
    model = cls(cfg) if cls is not None else AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # larger head weights: logits of a few units, so the softcap and scales matter
        model.get_output_embeddings().weight.normal_(0.0, 0.3)
    return model.to(dtype).eval()


def _ids(n_windows: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (n_windows * SEQLEN + 7,), generator=g)  # a partial window at the end


def _reference_ppl(model, ids: torch.Tensor, windows: int) -> float:
    """exp(mean NLL) from the model's full logits, each window alone, log-softmax in float64."""
    total, count = 0.0, 0
    with torch.no_grad():
        for k in range(windows):
            w = ids[k * SEQLEN:(k + 1) * SEQLEN]
            logp = torch.log_softmax(model(input_ids=w[None]).logits[0].double(), dim=-1)
            total -= logp[torch.arange(SEQLEN - 1), w[1:]].sum().item()
            count += SEQLEN - 1
    return float(torch.exp(torch.tensor(total / count, dtype=torch.float64)))


def _ppl(model, ids, batch_size=2, max_windows=None, logits="chunked"):
    return run_to_completion(iter_perplexity(model, ids, SEQLEN, batch_size=batch_size,
                                             max_windows=max_windows, logits=logits))


def _path(model, ids, batch_size=2) -> NllScorer:
    scorer = NllScorer(model)
    with torch.inference_mode():
        scorer(ids[: batch_size * SEQLEN].view(batch_size, SEQLEN))
    return scorer


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 7 rows: several chunks per batch, the last one short, across window boundaries."""
    monkeypatch.setattr(ppl_mod, "_CHUNK_ROWS", (7, 7))


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_perplexity_equals_the_full_logits(arch, small_chunks):
    model = _model(arch)
    ids = _ids()
    got = _ppl(model, ids, batch_size=2)
    want = _reference_ppl(model, ids, 5)
    assert got == pytest.approx(want, rel=1e-6)
    scorer = _path(model, ids)
    assert scorer.path == "chunked", scorer.reason
    # the chunked path reproduces the model's post-processing, not just the head's product
    if arch in ("gemma2", "cohere", "granite"):
        raw = _ppl_of_raw_head(model, ids, 5)
        assert abs(raw / want - 1) > 1e-2


def _ppl_of_raw_head(model, ids, windows) -> float:
    """The perplexity the head's product alone would give (no cap, no scale)."""
    head = model.get_output_embeddings()
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        total, count = 0.0, 0
        with torch.no_grad():
            for k in range(windows):
                w = ids[k * SEQLEN:(k + 1) * SEQLEN]
                seen.clear()
                model(input_ids=w[None])
                logp = torch.log_softmax(seen[0][0].double(), dim=-1)
                total -= logp[torch.arange(SEQLEN - 1), w[1:]].sum().item()
                count += SEQLEN - 1
    finally:
        hook.remove()
    return float(torch.exp(torch.tensor(total / count, dtype=torch.float64)))


@pytest.mark.parametrize("batch_size, max_windows", [(1, None), (3, None), (4, 3)])
def test_chunked_equals_full_for_any_batch(batch_size, max_windows):
    model = _model("qwen3")
    ids = _ids()
    full = _ppl(model, ids, batch_size, max_windows, logits="full")
    got = _ppl(model, ids, batch_size, max_windows)
    assert got == pytest.approx(full, rel=1e-6)
    assert got == pytest.approx(_reference_ppl(model, ids, max_windows or 5), rel=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "granite"])
def test_bf16_chunked_equals_the_models_own_logits(arch, small_chunks):
    """bfloat16 weights: the head runs in bfloat16 as the model's does, the loss in float32; the
    same perplexity as the model's whole logits up to float32 sums."""
    model = _model(arch, torch.bfloat16)
    ids = _ids()
    got = _ppl(model, ids)
    full = _ppl(model, ids, logits="full")
    assert got == pytest.approx(full, rel=1e-5)
    assert got == pytest.approx(_reference_ppl(model, ids, 5), rel=1e-5)
    assert _path(model, ids).path == "chunked"


def _llama_cls():
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM


class _ScaledLogits(_llama_cls()):
    """Scales the logits in its own forward: a post-processing the chunked path cannot know."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 1.7
        return out


class _ReshapesLogits(_llama_cls()):
    """Needs the head's output over every position (a view to the input's length, a scale per position)."""

    def forward(self, input_ids=None, **kwargs):
        out = super().forward(input_ids=input_ids, **kwargs)
        b, t = input_ids.shape
        out.logits = out.logits.view(b, t, -1) * (1.0 + torch.arange(t) / t)[None, :, None]
        return out


class _BypassesHead(_llama_cls()):
    """Multiplies by the head's weight without calling the head module (the hook never runs)."""

    def forward(self, input_ids=None, **kwargs):
        kwargs.pop("use_cache", None)
        hidden = self.model(input_ids=input_ids, use_cache=False).last_hidden_state
        from transformers.modeling_outputs import CausalLMOutputWithPast
        return CausalLMOutputWithPast(logits=torch.tanh(hidden @ self.lm_head.weight.T))


@pytest.mark.parametrize("cls", [_ScaledLogits, _ReshapesLogits, _BypassesHead])
def test_unknown_post_processing_falls_back_to_the_models_logits(cls):
    model = _model("llama", cls=cls)
    ids = _ids()
    scorer = _path(model, ids)
    assert scorer.path == "full" and scorer.reason
    got = _ppl(model, ids, batch_size=2)
    want = _reference_ppl(model, ids, 5)
    assert got == pytest.approx(want, rel=1e-6)
    # the fallback matters: the plain head's perplexity is another number
    if cls is not _BypassesHead:  # (this one never calls its head: tanh changes everything)
        assert abs(_ppl_of_raw_head(model, ids, 5) / want - 1) > 1e-2
    assert not model.get_output_embeddings()._forward_pre_hooks


def test_full_is_asked_for():
    model = _model("llama")
    scorer = NllScorer(model, "full")
    assert scorer.path == "full"


def test_cancel_stops_between_batches_and_leaves_no_hook():
    model = _model("gemma2")
    ids = _ids()
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    gen = iter_perplexity(model, ids, SEQLEN, batch_size=2, should_stop=stop)
    events = []
    with pytest.raises(Cancelled):
        for ev in gen:
            events.append(ev)
    assert [e.done for e in events if isinstance(e, PhaseProgress)] == [2]
    assert not model.get_output_embeddings()._forward_pre_hooks


def test_progress_events_are_unchanged():
    model = _model("llama")
    events: list = []
    run_to_completion(iter_perplexity(model, _ids(), SEQLEN, batch_size=2), events.append)
    assert [(e.done, e.total) for e in events if isinstance(e, PhaseProgress)] == [(2, 5), (4, 5), (5, 5)]


def test_chunk_rows_keep_a_chunk_of_logits_small():
    for itemsize in (4, 2):
        rows = ppl_mod.chunk_rows(49152, itemsize)
        assert rows * 49152 * itemsize <= ppl_mod._CHUNK_BYTES[itemsize]
        assert ppl_mod._CHUNK_ROWS[0] <= rows <= ppl_mod._CHUNK_ROWS[1]
    assert ppl_mod.chunk_rows(49152, 2) < ppl_mod.chunk_rows(49152, 4)
    assert ppl_mod.chunk_rows(300) == ppl_mod._CHUNK_ROWS[1]
    assert ppl_mod.chunk_rows(10 ** 9) == ppl_mod._CHUNK_ROWS[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("loss_bytes", [None, 3 * 4 * 1000])
def test_summed_nll_is_the_cross_entropy_of_every_row(dtype, loss_bytes, monkeypatch):
    """Against the mean NLL written out in float64 from the same (rounded) logits: each row's
    log-sum-exp minus its target's logit, whether the rows go in one piece or in pieces of 3
    (the last one short)."""
    if loss_bytes is not None:
        monkeypatch.setattr(ppl_mod, "_LOSS_BYTES", loss_bytes)
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(20, 1000, generator=g) * 4).to(dtype)
    target = torch.randint(0, 1000, (20,), generator=g)
    z = logits.double()
    want = sum(float(torch.logsumexp(z[r], 0) - z[r, target[r]]) for r in range(20))
    got = ppl_mod.summed_nll(logits, target)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(want, rel=1e-6)
