"""SparseGPT: exact sparsity, N:M validity, equality with a slow direct OBS implementation,
lower reconstruction error than Wanda, dead inputs and damping behaviour; the pipeline's one pass
per block against a module-by-module sequential reference built on that OBS implementation."""

from __future__ import annotations

import pytest
import torch
from prunestudio.core.errors import ConfigError, PruneStudioError
from prunestudio.core.prune.methods.masks import nm_mask, per_row_mask
from prunestudio.core.prune.methods.sparsegpt import sparsegpt_prune
from prunestudio.core.prune.needs import StatsNeeds
from prunestudio.core.prune.stats import InputStats


def _module(rows: int, cols: int, tokens: int, seed: int = 0):
    """Weight and correlated inputs with uneven feature scales (as LLM activations have)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    mix = torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g)
    scale = torch.exp(torch.randn(cols, generator=g))
    x = (torch.randn(tokens, cols, generator=g) @ mix) * scale
    stats = InputStats(cols, StatsNeeds(sq_norm=True, hessian=True), "cpu")
    for chunk in x.split(37):  # several batches: exercises the running mean
        stats.add(chunk)
    return w, x, stats


def sparsegpt_reference_slow(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    n: int = 0,
    m: int = 0,
    percdamp: float = 0.01,
    mask_block: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Direct OBS pruning, one column at a time, in float64, without Cholesky or lazy batches.

    For column j, with F = {j, ..., cols-1} the columns not yet fixed and G = inv(H[F, F]):
    saliency w^2 / G_00; update w_F -= (w_j - q_j) / G_00 * G[0, :]. The unstructured mask of
    each block of ``mask_block`` columns is chosen when the block starts (on the weights updated
    so far), removing floor(rows*end*s) - floor(rows*start*s) entries; N:M groups are chosen when
    their first column is reached. Returns (weight, mask, error).
    """
    w = weight.to(torch.float64).clone()
    h = hessian.to(torch.float64).clone()
    rows, cols = w.shape
    dead = torch.diag(h) == 0
    for j in range(cols):
        if dead[j]:
            h[j, j] = 1.0
            w[:, j] = 0.0
    h = h + percdamp * torch.diag(h).mean() * torch.eye(cols, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny LAPACK calls are 100x slower multi-threaded on a busy CPU
    try:
        inverses = [torch.linalg.inv(h[j:, j:]) for j in range(cols)]
    finally:
        torch.set_num_threads(threads)
    g00 = [g[0, 0] for g in inverses]
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    error = 0.0
    for j in range(cols):
        if not (n and m) and j % mask_block == 0:
            end = min(j + mask_block, cols)
            k = int(rows * end * sparsity) - int(rows * j * sparsity)
            sal = torch.stack([w[:, c] ** 2 / g00[c] for c in range(j, end)], dim=1)
            order = torch.argsort(sal.reshape(-1))[:k]
            block = torch.zeros(rows * (end - j), dtype=torch.bool)
            block[order] = True
            mask[:, j:end] = block.reshape(rows, end - j)
        if n and m and j % m == 0:
            sal = torch.stack([w[:, c] ** 2 / g00[c] for c in range(j, j + m)], dim=1)
            for row in range(rows):
                mask[row, j + torch.argsort(sal[row])[:n]] = True
        g = inverses[j]
        q = torch.where(mask[:, j], torch.zeros_like(w[:, j]), w[:, j])
        err = (w[:, j] - q) / g[0, 0]
        error += float(((w[:, j] - q) ** 2 / g[0, 0]).sum()) / 2
        w[:, j:] -= err[:, None] * g[0, :][None, :]
        w[:, j] = q
    return w, mask, error


def _recon(w: torch.Tensor, w_pruned: torch.Tensor, x: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(x @ w.T - x @ w_pruned.T))


@pytest.mark.parametrize("blocksize,cols", [(8, 64), (16, 64), (64, 64), (40, 72), (128, 200)])
def test_fast_equals_slow_unstructured(blocksize: int, cols: int) -> None:
    # 40 / 72 / 200: blocks and the column loop's 16-column sub-blocks that do not divide evenly
    torch.manual_seed(0)
    w, _, stats = _module(12, cols, 300, seed=1)
    fast = sparsegpt_prune(w, stats.hessian, 0.5, blocksize=blocksize)
    slow_w, slow_mask, slow_err = sparsegpt_reference_slow(w, stats.hessian, 0.5, mask_block=blocksize)
    assert torch.equal(fast.mask, slow_mask)
    torch.testing.assert_close(fast.weight, slow_w.float(), rtol=1e-4, atol=1e-4)
    assert fast.error == pytest.approx(slow_err, rel=1e-3)
    assert not fast.damping_increased and fast.damping == pytest.approx(0.01)


@pytest.mark.parametrize("n,m,blocksize", [(2, 4, 16), (2, 4, 64), (4, 8, 40), (3, 24, 48)])
def test_fast_equals_slow_nm(n: int, m: int, blocksize: int) -> None:
    torch.manual_seed(0)
    w, _, stats = _module(12, 96, 300, seed=2)
    fast = sparsegpt_prune(w, stats.hessian, 0.5, n=n, m=m, blocksize=blocksize)
    slow_w, slow_mask, _ = sparsegpt_reference_slow(w, stats.hessian, 0.5, n=n, m=m)
    assert torch.equal(fast.mask, slow_mask)
    torch.testing.assert_close(fast.weight, slow_w.float(), rtol=1e-4, atol=1e-4)


def test_blocksize_not_multiple_of_m_is_rounded() -> None:
    w, _, stats = _module(8, 64, 200, seed=3)
    a = sparsegpt_prune(w, stats.hessian, 0.5, n=2, m=4, blocksize=18)  # -> 16
    b = sparsegpt_prune(w, stats.hessian, 0.5, n=2, m=4, blocksize=16)
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.weight, b.weight)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_exact_unstructured_sparsity(sparsity: float) -> None:
    torch.manual_seed(0)
    w, _, stats = _module(32, 128, 400, seed=4)
    res = sparsegpt_prune(w, stats.hessian, sparsity, blocksize=48)  # uneven last block
    assert res.mask.dtype == torch.bool and res.mask.shape == w.shape
    assert int(res.mask.sum()) == int(32 * 128 * sparsity)
    # each block removes exactly its share of the cumulative count
    for c0 in range(0, 128, 48):
        c1 = min(c0 + 48, 128)
        expect = int(32 * c1 * sparsity) - int(32 * c0 * sparsity)
        assert int(res.mask[:, c0:c1].sum()) == expect
    assert torch.all(res.weight[res.mask] == 0)
    assert res.weight.dtype == w.dtype and res.weight.shape == w.shape


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm_valid(n: int, m: int) -> None:
    w, _, stats = _module(32, 128, 400, seed=5)
    res = sparsegpt_prune(w, stats.hessian, 0.0, n=n, m=m)
    groups = res.mask.reshape(32, 128 // m, m).sum(dim=-1)
    assert torch.all(groups == n)
    # the weights are zero exactly where the mask says (the updates never land on a zero)
    assert torch.equal(res.weight == 0, res.mask)


@pytest.mark.parametrize("n,m", [(0, 0), (2, 4)])
def test_lower_error_than_wanda(n: int, m: int) -> None:
    torch.manual_seed(0)
    w, x, stats = _module(32, 128, 512, seed=6)
    res = sparsegpt_prune(w, stats.hessian, 0.5, n=n, m=m)
    wanda_scores = w.abs() * stats.col_norm
    wanda_mask = nm_mask(wanda_scores, n, m) if n else per_row_mask(wanda_scores, 0.5)
    wanda_w = w.masked_fill(wanda_mask, 0.0)
    assert int(wanda_mask.sum()) == int(res.mask.sum())
    err_sgpt = _recon(w, res.weight, x)
    err_wanda = _recon(w, wanda_w, x)
    assert err_sgpt < 0.95 * err_wanda  # about 0.87 (unstructured) / 0.80 (2:4) here


def test_dead_input_column() -> None:
    w, x, _ = _module(16, 64, 300, seed=7)
    x[:, [3, 40]] = 0.0
    stats = InputStats(64, StatsNeeds(hessian=True), "cpu")
    stats.add(x)
    res = sparsegpt_prune(w, stats.hessian, 0.5, blocksize=16)
    assert torch.all(torch.isfinite(res.weight))
    assert torch.all(res.weight[:, [3, 40]] == 0)
    assert int(res.mask.sum()) == 16 * 64 // 2
    assert not res.damping_increased
    slow_w, slow_mask, _ = sparsegpt_reference_slow(w, stats.hessian, 0.5, mask_block=16)
    torch.testing.assert_close(res.weight, slow_w.float(), rtol=1e-4, atol=1e-4)
    assert stats.hessian[3, 3] == 0  # the caller's Hessian is not modified


def test_non_pd_hessian_increases_damping() -> None:
    w, x, _ = _module(8, 32, 16, seed=8)  # 16 tokens < 32 features: H is singular
    h = 2.0 / x.shape[0] * x.T @ x
    mean_diag = float(torch.diag(h).mean())
    h_bad = h - 0.05 * mean_diag * torch.eye(32)  # min eigenvalue -5% of mean(diag)
    res = sparsegpt_prune(w, h_bad, 0.5)
    assert res.damping_increased
    assert res.damping == pytest.approx(0.1)
    assert torch.all(torch.isfinite(res.weight))
    assert int(res.mask.sum()) == 8 * 32 // 2


def test_hopeless_hessian_raises() -> None:
    w = torch.randn(4, 8)
    with pytest.raises(PruneStudioError, match="not positive definite"):
        sparsegpt_prune(w, -torch.eye(8), 0.5)
    h = torch.eye(8)
    h[1, 2] = float("nan")
    with pytest.raises(PruneStudioError, match="NaN"):
        sparsegpt_prune(w, h, 0.5)


def test_dtype_preserved_and_inputs_untouched() -> None:
    w, _, stats = _module(16, 64, 200, seed=9)
    w16 = w.to(torch.bfloat16)
    h_before = stats.hessian.clone()
    w_before = w16.clone()
    res = sparsegpt_prune(w16, stats.hessian, 0.5, blocksize=32)
    assert res.weight.dtype == torch.bfloat16
    assert torch.all(res.weight[res.mask] == 0)
    assert torch.equal(stats.hessian, h_before) and torch.equal(w16, w_before)


def test_invalid_settings() -> None:
    w, _, stats = _module(4, 16, 50, seed=10)
    with pytest.raises(ConfigError):
        sparsegpt_prune(w, stats.hessian, 1.0)
    with pytest.raises(ConfigError):
        sparsegpt_prune(w, stats.hessian, 0.5, n=4, m=4)
    with pytest.raises(ConfigError):
        sparsegpt_prune(w, stats.hessian[:8, :8], 0.5)
    with pytest.raises(ConfigError):
        sparsegpt_prune(w, stats.hessian, 0.5, percdamp=-1.0)


def test_shared_factor_gives_the_same_result() -> None:
    """A factor computed once for an input shared by several modules (q/k/v) prunes each of them
    exactly as computing it anew would, including the dead inputs' zeroed columns."""
    from prunestudio.core.prune.methods.sparsegpt import hessian_factor

    w, _, stats = _module(10, 48, 200, seed=6)
    h = stats.hessian.clone()
    h[5, :] = 0.0
    h[:, 5] = 0.0  # a dead input
    fac = hessian_factor(h, 0.01)
    for seed in (7, 8):
        other = torch.randn(10, 48, generator=torch.Generator().manual_seed(seed))
        a = sparsegpt_prune(other, h, 0.5, factor=fac)
        b = sparsegpt_prune(other, h, 0.5)
        assert torch.equal(a.mask, b.mask) and torch.equal(a.weight, b.weight)
        assert bool((a.weight[:, 5] == 0).all())


# ---- one pass per block (core/prune/lockstep.py) against a sequential reference written here -----


class _Stop(Exception):
    pass


def _first_block_inputs(model, ids: torch.Tensor):
    """The first decoder block's hidden states and keyword arguments, caught by a pre-hook."""
    seen: dict = {}

    def grab(module, args, kwargs):
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]
        seen["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Stop

    handle = model.model.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen["hidden"], seen["kwargs"]


def _block_output(layer, hidden, kwargs):
    with torch.no_grad():
        out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def sequential_sparsegpt_reference(model, ids: torch.Tensor, sparsity: float, n: int = 0, m: int = 0,
                                   blocksize: int = 128) -> None:
    """SparseGPT's "true sequential" order, from its description, pruning ``model`` in place.

    Block after block; inside a block, module after module in the order the forward pass reaches
    them: run the block (with every module before this one already pruned) on all calibration
    samples, collect this module's inputs with a hook, H = X^T X in float64, prune it with
    :func:`sparsegpt_reference_slow`. The next block's inputs are the pruned block's outputs.
    """
    hidden, kwargs = _first_block_inputs(model, ids)
    for layer in model.model.layers:
        linears = {name: mod for name, mod in layer.named_modules() if isinstance(mod, torch.nn.Linear)}
        order: list[str] = []
        handles = [mod.register_forward_pre_hook(lambda mod_, args, name=name: order.append(name))
                   for name, mod in linears.items()]
        try:
            _block_output(layer, hidden, kwargs)
        finally:
            for h in handles:
                h.remove()
        assert sorted(order) == sorted(linears)  # each runs once per forward pass
        for name in order:
            mod = linears[name]
            xs: list[torch.Tensor] = []
            handle = mod.register_forward_pre_hook(lambda mod_, args: xs.append(args[0].detach()))
            try:
                _block_output(layer, hidden, kwargs)
            finally:
                handle.remove()
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in xs]).to(torch.float64)
            w, _, _ = sparsegpt_reference_slow(mod.weight.detach(), x.T @ x, sparsity, n=n, m=m,
                                               mask_block=blocksize)
            with torch.no_grad():
                mod.weight.copy_(w.to(mod.weight.dtype))
        hidden = _block_output(layer, hidden, kwargs)


@pytest.mark.parametrize("sparsity,n,m", [(0.5, 0, 0), (0.6, 0, 0), (0.5, 2, 4)])
def test_one_pass_pipeline_equals_the_sequential_reference(make_model, tokenizer, sparsity, n, m) -> None:
    from prunestudio.core.config import PruneConfig
    from prunestudio.core.events import run_to_completion
    from prunestudio.core.prune.pipeline import iter_prune

    ids = torch.randint(3, len(tokenizer), (8, 32), generator=torch.Generator().manual_seed(0))
    structure = f"{n}:{m}" if n else "unstructured"
    ref, one, two = make_model("llama"), make_model("llama"), make_model("llama")
    sequential_sparsegpt_reference(ref, ids, sparsity, n, m)
    for model, once in ((one, True), (two, False)):
        cfg = PruneConfig(method="sparsegpt", sparsity=sparsity, structure=structure, one_pass=once, batch_size=3)
        run_to_completion(iter_prune(model, ids, cfg))
    moved = 0
    for (name, w_ref), w_one, w_two in zip(ref.model.layers.named_parameters(),
                                           one.model.layers.parameters(), two.model.layers.parameters()):
        if not name.endswith("proj.weight"):
            continue
        w_ref, w_one, w_two = w_ref.detach(), w_one.detach(), w_two.detach()
        # float32 statistics here against float64: a rare score on a tie may flip (none seen)
        flips = int(((w_ref == 0) != (w_one == 0)).sum())
        assert flips <= w_ref.numel() // 4000, (name, flips)
        same = (w_ref == 0) == (w_one == 0)
        torch.testing.assert_close(w_one[same], w_ref[same], rtol=1e-4, atol=1e-5, msg=name)
        moved += not torch.allclose(w_two, w_ref, rtol=1e-4, atol=1e-5)
    # the test tells the orders apart: in two passes every module but block 0's q/k/v differs
    assert moved >= 15
