"""How much a calibration set looks like the model's own training data: Min-K%++ and perplexity.

Min-K%++ (Zhang et al., 2024, "Min-K%++: Improved Baseline for Detecting Pre-Training Data from
Large Language Models") scores each token by how its log-probability compares with the whole
next-token distribution the model predicted at that position::

    z_t = (log p(x_t | x_<t) - mu_t) / sigma_t
    mu_t    = E_{z ~ p(.|x_<t)} [log p(z | x_<t)]
    sigma_t = sqrt(E_{z ~ p(.|x_<t)} [(log p(z | x_<t))^2] - mu_t^2)

and a sequence by the mean of ``z_t`` over its lowest ``k`` fraction of tokens (tokens 1..L-1;
``floor((L-1) * k)`` of them, at least one). Higher means the text looks more like training data.
This follows the authors' reference implementation (zjysteven/mink-plus-plus, ``run.py``): the
same mean/variance over the full vocabulary, the same ``int(len * ratio)`` count of lowest scores;
we compute in float32 and keep at least one token where theirs would average an empty list.

Ji et al. (ICLR 2025) found that calibration data similar to the pre-training data prunes better;
the GUI shows these scores next to each calibration set.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..errors import CalibrationError, Cancelled, ConfigError
from ..model.devices import logits_micro_batch, model_device
from .calibset import CalibrationSet, tokenizer_fingerprint

__all__ = ["minkpp_scores", "score_calibration", "token_minkpp"]

def _check_k(k: float) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not (0 < k <= 1):
        raise ConfigError(f"The Min-K%++ fraction k must be above 0 and at most 1 (got {k!r}).")


def token_minkpp(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token Min-K%++ ``z`` and log-probabilities.

    ``logits`` [..., T, V] predict ``targets`` [..., T]. Returns ``(z, token_logp)`` [..., T],
    both float32.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, 0.0)  # 0 * -inf -> 0 for masked-out tokens
    mu = plogp.sum(-1)
    second = torch.where(p > 0, plogp * logp, 0.0).sum(-1)
    del plogp, p
    var = (second - mu.square()).clamp_min(1e-12)
    tok = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (tok - mu) / var.sqrt(), tok


def _lowest_mean(z: torch.Tensor, k: float) -> float:
    n = z.numel()
    m = max(1, int(n * k))
    return float(torch.sort(z.float().cpu()).values[:m].double().mean())


def _score_batches(
    model: Any, input_ids: torch.Tensor, k: float, batch_size: int, should_stop: Callable[[], bool]
) -> tuple[list[float], list[float]]:
    """Min-K%++ score and perplexity of every row, from one forward pass per micro-batch."""
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise CalibrationError("Scoring needs a [samples, tokens] tensor with at least 2 tokens per sample.")
    if batch_size < 1:
        raise ConfigError(f"The batch size must be a positive whole number (got {batch_size!r}).")
    device = model_device(model)
    seqlen = input_ids.shape[1]
    vocab = int(getattr(model.config, "vocab_size", 0) or 50_000)
    mb = logits_micro_batch(batch_size, seqlen, vocab)
    scores: list[float] = []
    ppls: list[float] = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, input_ids.shape[0], mb):
            if should_stop():
                raise Cancelled()
            x = input_ids[i : i + mb].to(device)
            logits = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits[:, :-1]
            for r in range(x.shape[0]):  # one row at a time keeps the temporaries small
                z, tok = token_minkpp(logits[r], x[r, 1:])
                scores.append(_lowest_mean(z, k))
                ppls.append(math.exp(-float(tok.float().mean())))
            del logits
    return scores, ppls


def minkpp_scores(
    model: Any,
    input_ids: torch.Tensor,
    k: float = 0.2,
    batch_size: int = 8,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[float]:
    """Min-K%++ score of each row of ``input_ids`` [n, L] (higher: more like training data)."""
    _check_k(k)
    return _score_batches(model, input_ids, k, batch_size, should_stop)[0]


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    std = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5
    return mean, std


def score_calibration(
    model: Any,
    tokenizer: Any,
    calib: CalibrationSet | torch.Tensor,
    k: float = 0.2,
    batch_size: int = 8,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Min-K%++ and perplexity statistics of a calibration set's kept samples (or of a tensor).

    Returns ``{"minkpp_mean", "minkpp_std", "ppl_mean", "ppl_std", "n", "k"}`` (population
    standard deviations). A set made for another tokenizer is refused.
    """
    _check_k(k)
    if isinstance(calib, CalibrationSet):
        if calib.tokenizer_fingerprint and tokenizer is not None:
            if tokenizer_fingerprint(tokenizer) != calib.tokenizer_fingerprint:
                raise CalibrationError(
                    f"This calibration set was made for another tokenizer ({calib.tokenizer_name or 'unknown'}); "
                    "its token ids mean nothing to this model."
                )
        input_ids = calib.input_ids()
    elif isinstance(calib, torch.Tensor):
        input_ids = calib
    else:
        raise TypeError("calib must be a CalibrationSet or a [n, L] tensor of token ids")
    scores, ppls = _score_batches(model, input_ids.long(), k, batch_size, should_stop)
    mk_mean, mk_std = _mean_std(scores)
    ppl_mean, ppl_std = _mean_std(ppls)
    return {
        "minkpp_mean": mk_mean,
        "minkpp_std": mk_std,
        "ppl_mean": ppl_mean,
        "ppl_std": ppl_std,
        "n": len(scores),
        "k": k,
    }
