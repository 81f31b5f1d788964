"""Per-module input statistics gathered with forward hooks during calibration.

One :class:`InputStats` per prunable linear module accumulates, in float32, only what the
chosen method needs:

* ``sq_norm``  sum over calibration tokens of x_j^2 (Wanda's ||X_j||_2^2, per input feature);
* ``mean`` / ``var``  running mean and variance of each input feature over all tokens;
* ``batch_var``  the mean over calibration sequences of each sequence's variance (DSnoT's
  variance, as its reference accumulates it: one batch there is one sequence);
* ``hessian``  H = 2/n * sum x x^T (SparseGPT), as a running mean so it never overflows;
* ``sample``  up to 128 token rows of the first input, evenly spaced (always kept: the relative
  output error ``||(W - W_pruned) X|| / ||W X||`` of each pruned module is measured on them).

The hook returns ``None`` so it never replaces the module's output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .needs import StatsNeeds

_HALF_GRAM: dict[str, bool] = {}


def _half_gram_ok(device: torch.device) -> bool:
    """Whether ``torch.mm(a, b, out_dtype=torch.float32)`` works for half inputs on ``device``."""
    key = str(device)
    if key not in _HALF_GRAM:
        try:
            a = torch.ones(4, 8, dtype=torch.bfloat16, device=device)
            ok = torch.mm(a.t(), a, out_dtype=torch.float32).dtype == torch.float32
        except (RuntimeError, TypeError, NotImplementedError):
            ok = False
        _HALF_GRAM[key] = ok
    return _HALF_GRAM[key]


_CHUNK_ROWS = 256


def column_sq_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the rows of ``x`` (``[rows, features]``) of ``x**2``, per feature, in float32.

    On the CPU the rows are taken 256 at a time and squared into a running ``[256, features]``
    sum, which stays in cache: one read of ``x`` and no temporary of its size (squaring the whole
    activation, as ``(x * x).sum(0)`` does, allocated and wrote tens of MB per module input and
    was about 3% of a Wanda run). Elsewhere one fused expression is faster than a loop of kernels.
    """
    rows = x.shape[0]
    if x.device.type != "cpu" or rows < 2 * _CHUNK_ROWS:
        x = x.to(torch.float32)
        return (x * x).sum(dim=0)
    full = rows - rows % _CHUNK_ROWS
    acc = torch.zeros(_CHUNK_ROWS, x.shape[1], dtype=torch.float32)
    for chunk in x[:full].split(_CHUNK_ROWS):
        chunk = chunk.to(torch.float32)
        acc.addcmul_(chunk, chunk)
    out = acc.sum(dim=0)
    if full < rows:
        tail = x[full:].to(torch.float32)
        out += (tail * tail).sum(dim=0)
    return out


SAMPLE_ROWS = 128


def sample_rows(x: torch.Tensor, rows: int = SAMPLE_ROWS) -> torch.Tensor:
    """At most ``rows`` token rows of ``x`` (``[tokens, features]``), evenly spaced, copied in their
    own dtype: the fixed sample the relative output error of a pruned module is measured on."""
    n = x.shape[0]
    if n <= rows:
        return x.detach().clone()
    idx = torch.linspace(0, n - 1, rows, device=x.device).round().long()
    return x.detach()[idx].clone()


class InputStats:
    """Accumulates statistics of the inputs of one linear module (features on the last dim)."""

    def __init__(self, in_features: int, needs: StatsNeeds, device: torch.device | str) -> None:
        self.in_features = in_features
        self.needs = needs
        self.nsamples = 0  # number of token rows seen
        f32 = dict(dtype=torch.float32, device=device)
        self.sq_norm = torch.zeros(in_features, **f32) if needs.sq_norm else None
        self._sum = torch.zeros(in_features, **f32) if needs.moments else None
        self._sumsq = torch.zeros(in_features, **f32) if needs.moments else None
        self.hessian = torch.zeros(in_features, in_features, **f32) if needs.hessian else None
        self.sample: torch.Tensor | None = None  # a few token rows of the first input (output error)
        self._var_sum = torch.zeros(in_features, **f32) if needs.batch_var else None

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        if self._var_sum is not None:
            self._add_sequence_vars(x)
        x = x.reshape(-1, x.shape[-1])
        n = x.shape[0]
        if n == 0:
            return
        if self.sample is None:
            self.sample = sample_rows(x)
        sq = column_sq_sum(x) if self.sq_norm is not None or self._sumsq is not None else None
        if self.sq_norm is not None:
            self.sq_norm += sq
        if self._sum is not None:
            self._sum += x.sum(dim=0, dtype=torch.float32)
            self._sumsq += sq
        if self.hessian is not None:
            low = x if x.dtype in (torch.bfloat16, torch.float16) and x.device.type == "cuda" else None
            x = x.to(torch.float32)
            # Running mean of 2 x x^T as in the SparseGPT reference: H <- H * n/(n+k) + 2/(n+k) X^T X
            total = self.nsamples + n
            self.hessian.mul_(self.nsamples / total)
            if low is not None and _half_gram_ok(low.device):
                # bf16/fp16 inputs on a GPU: products of half-precision numbers are exact in float32,
                # so a half-precision GEMM accumulating in float32 gives the float32 Hessian (up to
                # summation order) at tensor-core speed instead of the float32 GEMM's.
                self.hessian.add_(torch.mm(low.t(), low, out_dtype=torch.float32), alpha=2.0 / total)
            else:
                self.hessian.addmm_(x.t(), x, alpha=2.0 / total)
        self.nsamples += n

    def _add_sequence_vars(self, x: torch.Tensor) -> None:
        """Add ``tokens * variance`` of each sequence of ``x`` (``[..., seq, features]``; a 2-D
        input is one sequence), so that :attr:`batch_var` is the token-weighted mean of the
        per-sequence variances (all sequences have the same length in calibration)."""
        seqs = x.reshape(-1, x.shape[-1]).unsqueeze(0) if x.dim() < 3 else x.reshape(-1, *x.shape[-2:])
        for seq in seqs:
            if seq.shape[0]:
                self._var_sum += torch.var(seq.to(torch.float32), dim=0, unbiased=False) * seq.shape[0]

    @property
    def batch_var(self) -> torch.Tensor:
        """Mean over calibration sequences of each input feature's variance within the sequence
        (the DSnoT reference's ``var``; not the variance over all tokens, :attr:`var`)."""
        assert self._var_sum is not None, "per-sequence variances were not collected"
        return self._var_sum / max(self.nsamples, 1)

    @property
    def mean(self) -> torch.Tensor:
        assert self._sum is not None, "moments were not collected"
        return self._sum / max(self.nsamples, 1)

    @property
    def var(self) -> torch.Tensor:
        assert self._sumsq is not None, "moments were not collected"
        n = max(self.nsamples, 1)
        return (self._sumsq / n - (self._sum / n) ** 2).clamp_min(0.0)

    @property
    def col_norm(self) -> torch.Tensor:
        """||X_j||_2 per input feature (Wanda)."""
        assert self.sq_norm is not None, "norms were not collected"
        return self.sq_norm.sqrt()

    def hook(self, module: torch.nn.Module, args: tuple, kwargs: dict | None = None) -> None:
        """``register_forward_pre_hook`` callback: records the input, returns None."""
        self.add(args[0] if args else next(iter(kwargs.values())))
        return None
