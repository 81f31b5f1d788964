"""The decoding attention of self-generation (core/model/attention.py): grouped query heads folded
into rows of their key/value head for one new token, on the CPU, when transformers has no mask."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _selfgen_helpers import make_model, make_tokenizer  # noqa: E402
from prunestudio.core.calib.selfgen import GenerationSettings  # noqa: E402
from prunestudio.core.calib.selfgen import sampler  # noqa: E402
from prunestudio.core.model import attention  # noqa: E402


class _Module:
    def __init__(self, groups: int) -> None:
        self.num_key_value_groups = groups
        self.is_causal = True


def _attention_by_hand(q, k, v, scale, mask=None):
    """Each query head h against key/value head h // groups, in float64, written out."""
    b, heads, q_len, d = q.shape
    groups = heads // k.shape[1]
    out = torch.empty(b, q_len, heads, d, dtype=torch.float64)
    for h in range(heads):
        kk, vv = k[:, h // groups].double(), v[:, h // groups].double()
        s = q[:, h].double() @ kk.transpose(-1, -2) * scale
        if mask is not None:
            s = s.masked_fill(~mask[:, 0], float("-inf"))
        out[:, :, h] = torch.softmax(s, -1) @ vv
    return out


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("heads,kv", [(9, 3), (8, 2), (4, 1)])
def test_one_token_equals_attention_written_out(dtype, tol, heads, kv):
    g = torch.Generator().manual_seed(heads * 10 + kv)
    b, length, d = 5, 37, 16
    q = torch.randn(b, heads, 1, d, generator=g).to(dtype)
    k = torch.randn(b, kv, length, d, generator=g).to(dtype)
    v = torch.randn(b, kv, length, d, generator=g).to(dtype)
    want = _attention_by_hand(q, k, v, d ** -0.5)
    folded = attention.folded_sdpa(q, k, v, heads // kv, d ** -0.5)
    assert folded.shape == (b, 1, heads, d) and folded.dtype == dtype
    assert torch.allclose(folded.double(), want, atol=tol, rtol=0)
    got, weights = attention.packed_sdpa(_Module(heads // kv), q, k, v, None, scaling=d ** -0.5)
    assert weights is None and got.shape == (b, 1, heads, d)
    assert torch.allclose(got.double(), want, atol=tol, rtol=0)
    assert torch.equal(got, folded) == (dtype == torch.bfloat16)  # float32 keeps transformers' kernel


def test_every_other_call_is_transformers_own():
    """A prompt (several query tokens), a mask, or no grouping: exactly transformers' sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 6, 8, generator=g)
    k, v = torch.randn(2, 2, 6, 8, generator=g), torch.randn(2, 2, 6, 8, generator=g)
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[0, ..., :2] = False
    cases = [(q, k, v, None, 2), (q[:, :, -1:], k, v, mask, 2), (q[:, :2, -1:], k, v, None, 1),
             (q[:, :, -1:], k, v, None, 2)]  # the last: one token, no mask, but float32
    for qq, kk, vv, m, groups in cases:
        got, _ = attention.packed_sdpa(_Module(groups), qq, kk, vv, m, scaling=0.3)
        want, _ = sdpa_attention_forward(_Module(groups), qq, kk, vv, m, scaling=0.3)
        assert torch.equal(got, want)


def _sample(model, prompts, seeds):
    settings = GenerationSettings(n=1, seqlen=24, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
    return sampler.sample_tokens(model, prompts, 24, settings, seeds, pad_id=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_sampler_folds_the_heads_in_low_precision_and_restores_the_model(dtype, monkeypatch):
    tok = make_tokenizer("llama")
    model = make_model("llama", tok, seed=4, init=0.1).to(dtype)  # 4 query heads, 2 key/value heads
    assert model.config._attn_implementation == "sdpa"
    folded: list[int] = []
    real = attention.folded_sdpa

    def spy(query, *a, **kw):
        folded.append(query.shape[0])
        return real(query, *a, **kw)

    monkeypatch.setattr(attention, "folded_sdpa", spy)
    ids = tok("the quick brown fox", add_special_tokens=False)["input_ids"]
    prompts = [ids[:3], ids[1:4], ids[:3]]  # one length: transformers drops the all-ones mask
    tokens, ppl = _sample(model, prompts, [1, 2, 3])
    assert model.config._attn_implementation == "sdpa"  # given back
    if dtype == torch.bfloat16:
        assert folded and set(folded) == {3}  # every decoding step, both layers, the whole batch
    else:
        assert not folded

    # against decoding with transformers' own attention throughout
    monkeypatch.setattr(sampler, "decode_attention", _no_switch)
    tokens_hf, ppl_hf = _sample(model, prompts, [1, 2, 3])
    if dtype == torch.float32:
        assert tokens == tokens_hf and ppl == ppl_hf  # float32 draws exactly what it drew before
    else:  # the folded kernel's values are checked against attention written out, above
        assert all(len(t) == 24 for t in tokens) and all(p > 1 for p in ppl)


class _no_switch:
    def __init__(self, model) -> None:
        pass

    def __enter__(self):
        return False

    def __exit__(self, *exc):
        return False


def test_a_model_without_sdpa_is_left_alone():
    tok = make_tokenizer("llama")
    model = make_model("llama", tok, seed=4)
    model.config._attn_implementation = "eager"
    with attention.decode_attention(model) as switched:
        assert not switched and model.config._attn_implementation == "eager"
