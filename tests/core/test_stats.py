"""Input statistics (core/prune/stats.py) against float64 sums, whatever the batch sizes and dtypes."""

from __future__ import annotations

import pytest
import torch
from prunestudio.core.prune.needs import StatsNeeds
from prunestudio.core.prune.stats import InputStats, column_sq_sum


@pytest.mark.parametrize("rows", [1, 300, 511, 512, 1024, 1300, 4096 + 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_column_sq_sum_matches_float64(rows, dtype):
    g = torch.Generator().manual_seed(rows)
    # features of very different scales, as after an RMSNorm with outlier channels
    x = (torch.randn(rows, 96, generator=g) * torch.logspace(-2, 2, 96)).to(dtype)
    got = column_sq_sum(x)
    ref = (x.double() ** 2).sum(dim=0)
    assert got.dtype == torch.float32 and got.shape == (96,)
    torch.testing.assert_close(got.double(), ref, rtol=2e-6, atol=0)


def test_column_sq_sum_of_a_strided_view():
    x = torch.randn(1200, 64, 3)[:, :, 1]  # not contiguous
    torch.testing.assert_close(column_sq_sum(x).double(), (x.double() ** 2).sum(0), rtol=2e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_accumulated_statistics_equal_one_pass_over_all_tokens(dtype):
    """Batches of any size give the statistics of all their tokens together."""
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(b, 128, 40, generator=g) + 0.5).to(dtype) for b in (3, 1, 5)]
    st = InputStats(40, StatsNeeds(sq_norm=True, moments=True, hessian=True), "cpu")
    for b in batches:
        st.add(b)
    x = torch.cat([b.reshape(-1, 40) for b in batches]).double()
    assert st.nsamples == x.shape[0]
    torch.testing.assert_close(st.col_norm.double(), x.pow(2).sum(0).sqrt(), rtol=2e-6, atol=0)
    torch.testing.assert_close(st.mean.double(), x.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(st.var.double(), x.var(0, unbiased=False), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(st.hessian.double(), 2 * x.t() @ x / x.shape[0], rtol=1e-5, atol=1e-6)
