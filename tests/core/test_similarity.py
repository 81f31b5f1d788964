"""Min-K%++ and perplexity scoring of calibration sets."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _selfgen_helpers import make_model, make_tokenizer  # noqa: E402
from prunestudio.core.calib import similarity as simi  # noqa: E402
from prunestudio.core.calib.calibset import CalibrationSet, CalibSample, tokenizer_fingerprint  # noqa: E402
from prunestudio.core.errors import CalibrationError, Cancelled, ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    tok = make_tokenizer("llama")
    model = make_model("llama", tok, seed=5)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, len(tok), (5, 13), generator=g)
    return model, tok, ids


def _brute_minkpp(model, ids: torch.Tensor, k: float) -> list[float]:
    """The formula token by token, in float64, with explicit sums over the vocabulary."""
    out = []
    with torch.no_grad():
        for row in ids:
            logits = model(input_ids=row[None]).logits[0].double()
            zs = []
            for t in range(1, len(row)):
                logp = torch.log_softmax(logits[t - 1], -1)
                mu = sum(math.exp(lp) * lp for lp in logp.tolist())
                second = sum(math.exp(lp) * lp * lp for lp in logp.tolist())
                sigma = math.sqrt(second - mu * mu)
                zs.append((logp[row[t]].item() - mu) / sigma)
            zs.sort()
            m = max(1, int(len(zs) * k))
            out.append(sum(zs[:m]) / m)
    return out


@pytest.mark.parametrize("k", [0.2, 0.5, 1.0])
def test_minkpp_equals_brute_force(tiny, k):
    model, _, ids = tiny
    fast = simi.minkpp_scores(model, ids, k=k, batch_size=2)
    assert fast == pytest.approx(_brute_minkpp(model, ids, k), rel=1e-4, abs=1e-4)


def test_minkpp_ranks_model_text_above_random_tokens(tiny):
    """Text the model itself prefers (greedy) looks more 'like training data' than noise."""
    model, tok, ids = tiny
    greedy = []
    with torch.no_grad():
        for row in ids:
            seq = row[:1].tolist()
            while len(seq) < ids.shape[1]:
                seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
            greedy.append(seq)
    s_rand = simi.minkpp_scores(model, ids)
    s_greedy = simi.minkpp_scores(model, torch.tensor(greedy))
    assert sum(s_greedy) / len(s_greedy) > sum(s_rand) / len(s_rand)


def test_score_calibration_set_and_tensor(tiny):
    model, tok, ids = tiny
    cs = CalibrationSet(
        samples=[CalibSample(input_ids=r.tolist()) for r in ids] + [CalibSample(input_ids=ids[0].tolist(), dropped=True)],
        seqlen=ids.shape[1], tokenizer_fingerprint=tokenizer_fingerprint(tok),
    )
    res = simi.score_calibration(model, tok, cs, k=0.2)
    assert res["n"] == 5  # dropped samples are not scored
    assert set(res) >= {"minkpp_mean", "minkpp_std", "ppl_mean", "ppl_std", "n"}
    scores = simi.minkpp_scores(model, ids, k=0.2)
    assert res["minkpp_mean"] == pytest.approx(sum(scores) / 5)
    assert res["minkpp_std"] == pytest.approx(float(torch.tensor(scores, dtype=torch.float64).std(unbiased=False)))
    ppl = []
    with torch.no_grad():
        for row in ids:
            logits = model(input_ids=row[None]).logits[0, :-1]
            ppl.append(math.exp(torch.nn.functional.cross_entropy(logits, row[1:]).item()))
    assert res["ppl_mean"] == pytest.approx(sum(ppl) / 5, rel=1e-4)
    assert simi.score_calibration(model, tok, ids, k=0.2) == pytest.approx(res)


def test_other_tokenizer_is_refused(tiny):
    model, tok, ids = tiny
    cs = CalibrationSet(samples=[CalibSample(input_ids=ids[0].tolist())], seqlen=ids.shape[1],
                        tokenizer_fingerprint="0123456789abcdef")
    with pytest.raises(CalibrationError):
        simi.score_calibration(model, tok, cs)


def test_bad_k_and_cancel(tiny):
    model, tok, ids = tiny
    for k in (0, -0.1, 1.5):
        with pytest.raises(ConfigError):
            simi.minkpp_scores(model, ids, k=k)
    with pytest.raises(Cancelled):
        simi.minkpp_scores(model, ids, batch_size=1, should_stop=lambda: True)
