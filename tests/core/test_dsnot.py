"""DSnoT: preserved sparsity, equality with a plain per-row loop, lower expected and real
reconstruction error than the initial Wanda mask."""

from __future__ import annotations

import pytest
import torch
from prunestudio.core.errors import ConfigError, PruneStudioError
from prunestudio.core.prune.methods.dsnot import dsnot_refine, dsnot_skips, expected_error
from prunestudio.core.prune.methods.masks import nm_mask, per_row_mask
from prunestudio.core.prune.needs import StatsNeeds
from prunestudio.core.prune.stats import InputStats


def _data(rows: int, cols: int, tokens: int, seed: int, mean_scale: float = 2.0):
    """Inputs with non-zero feature means and varied variances; the means dominate when
    ``mean_scale`` is large (the regime DSnoT's expected-error criterion targets)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    mu = mean_scale * torch.randn(cols, generator=g)
    sd = torch.empty(cols).uniform_(0.2, 1.0, generator=g)
    x = mu + sd * torch.randn(tokens, cols, generator=g)
    stats = InputStats(cols, StatsNeeds(sq_norm=True, moments=True), "cpu")
    for chunk in x.split(100):
        stats.add(chunk)
    return w, x, stats


def _wanda(w: torch.Tensor, stats: InputStats, sparsity: float, n: int = 0, m: int = 0):
    scores = w.abs() * stats.col_norm
    return nm_mask(scores, n, m) if n else per_row_mask(scores, sparsity)


def reconstruction_error(w: torch.Tensor, mask: torch.Tensor, x: torch.Tensor) -> float:
    """||W X - W' X||_F over the calibration tokens, W' = W with the mask applied."""
    return float(torch.linalg.matrix_norm(x @ w.masked_fill(~mask, 0.0).T))


def dsnot_loop(w, mask, stats, n=0, m=0, max_cycles=50, thr=0.1, power=1.0, keep_sign=None,
               require_decrease=True) -> torch.Tensor:
    """The same rules written as a plain loop over rows with candidate sets (no sorting)."""
    nm = bool(n)
    keep_sign = nm if keep_sign is None else keep_sign
    mean, var = stats.mean.double(), stats.var.double()
    wd = w.double()
    d = wd * mean
    grow_key = d / var.clamp_min(1e-20) ** power
    wanda = wd.abs() * stats.col_norm.double()
    out = mask.clone()
    for i in range(w.shape[0]):
        row = out[i]
        growable = set(torch.nonzero(mask[i]).flatten().tolist())
        prunable = set(torch.nonzero(~mask[i]).flatten().tolist())
        r = float((d[i] * mask[i]).sum())
        for _ in range(max_cycles):
            if abs(r) <= thr or r == 0:
                break
            s = 1.0 if r > 0 else -1.0
            cands = [j for j in growable if s * d[i, j] > 0]
            if not cands:
                break
            g = max(cands, key=lambda j: s * float(grow_key[i, j]))
            if nm:
                start = g - g % m
                group = [j for j in range(start, start + m) if j in prunable]
                if not group:
                    growable.discard(g)
                    continue
            else:
                group = [j for j in prunable if s * d[i, j] < 0]
                if not group:
                    break
            p = min(group, key=lambda j: float(wanda[i, j]))
            r_after = r - float(d[i, g]) + float(d[i, p])
            if keep_sign and (r_after > 0) != (r > 0):
                break
            growable.discard(g)
            if require_decrease and abs(r_after) >= abs(r):
                continue
            prunable.discard(p)
            row[g], row[p] = False, True
            r = r_after
    return out


@pytest.mark.parametrize("require_decrease", [True, False])
@pytest.mark.parametrize("n,m", [(0, 0), (2, 4)])
def test_matches_plain_loop(n: int, m: int, require_decrease: bool) -> None:
    torch.manual_seed(0)
    w, _, stats = _data(16, 64, 400, seed=1)
    init = _wanda(w, stats, 0.5, n, m)
    res = dsnot_refine(w, init, stats, 0.5, n, m, update_threshold=0.1,
                       require_decrease=require_decrease)
    loop = dsnot_loop(w, init, stats, n, m, thr=0.1, require_decrease=require_decrease)
    assert torch.equal(res.mask, loop)
    assert res.swaps == int((res.mask & ~init).sum()) > 0


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_unstructured_keeps_sparsity_and_lowers_error(sparsity: float) -> None:
    torch.manual_seed(0)
    w, x, stats = _data(32, 128, 512, seed=2)
    init = _wanda(w, stats, sparsity)
    init_copy = init.clone()
    res = dsnot_refine(w, init, stats, sparsity)
    assert torch.equal(init, init_copy)  # input mask untouched
    assert res.mask.dtype == torch.bool and res.mask.shape == w.shape
    assert torch.all(res.mask.sum(dim=1) == int(128 * sparsity))
    assert res.swaps > 0 and 0 < res.cycles <= 50
    # the quantity DSnoT optimises ...
    r0 = expected_error(w, init, stats.mean)
    r1 = expected_error(w, res.mask, stats.mean)
    assert res.error_before == pytest.approx(float(r0.norm()), rel=1e-5)
    assert res.error_after == pytest.approx(float(r1.norm()), rel=1e-5)
    assert res.error_after < 0.5 * res.error_before
    assert torch.all(r1.abs() <= r0.abs() + 1e-5)  # no row gets worse
    # ... and the real layer-wise error on data whose means dominate
    assert reconstruction_error(w, res.mask, x) < 0.9 * reconstruction_error(w, init, x)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm_keeps_groups_and_lowers_error(n: int, m: int) -> None:
    torch.manual_seed(0)
    w, x, stats = _data(32, 128, 512, seed=3)
    init = _wanda(w, stats, 0.5, n, m)
    res = dsnot_refine(w, init, stats, 0.5, n, m)
    assert torch.all(res.mask.reshape(32, -1, m).sum(dim=-1) == n)
    assert res.swaps > 0
    assert res.error_after < 0.8 * res.error_before
    r0 = expected_error(w, init, stats.mean)
    r1 = expected_error(w, res.mask, stats.mean)
    assert torch.all(r1.abs() <= r0.abs() + 1e-5)
    assert torch.all(torch.sign(r1) * torch.sign(r0) >= 0)  # keep_sign is on for N:M
    assert reconstruction_error(w, res.mask, x) < 0.9 * reconstruction_error(w, init, x)


def test_reference_rule_keeps_sparsity() -> None:
    """require_decrease=False (the reference's acceptance rule) still swaps in pairs."""
    w, _, stats = _data(32, 128, 512, seed=4, mean_scale=0.5)
    init = _wanda(w, stats, 0.6)
    res = dsnot_refine(w, init, stats, 0.6, update_threshold=0.0, require_decrease=False)
    assert torch.all(res.mask.sum(dim=1) == int(128 * 0.6))
    assert res.cycles == 50  # no threshold: rows keep swapping until max_cycles
    res_nm = dsnot_refine(w, None, stats, 0.5, 2, 4, update_threshold=0.0, require_decrease=False)
    assert torch.all(res_nm.mask.reshape(32, -1, 4).sum(dim=-1) == 2)


def test_uneven_initial_mask_counts_preserved() -> None:
    """A mask with different counts per row (e.g. SparseGPT's per-block selection) keeps them."""
    w, _, stats = _data(16, 64, 300, seed=5)
    init = torch.rand(16, 64, generator=torch.Generator().manual_seed(0)) < 0.5
    res = dsnot_refine(w, init, stats, 0.5, update_threshold=0.0)
    assert torch.equal(res.mask.sum(dim=1), init.sum(dim=1))
    assert res.error_after <= res.error_before


def test_threshold_and_cycles_stop() -> None:
    w, _, stats = _data(16, 64, 300, seed=6)
    init = _wanda(w, stats, 0.5)
    huge = dsnot_refine(w, init, stats, 0.5, update_threshold=1e9)
    assert huge.swaps == 0 and torch.equal(huge.mask, init)
    assert huge.error_after == huge.error_before
    one = dsnot_refine(w, init, stats, 0.5, max_cycles=1, update_threshold=0.0)
    assert one.cycles == 1 and 0 < one.swaps <= 16
    assert int((one.mask != init).sum()) == 2 * one.swaps


def test_zero_variance_and_dead_features() -> None:
    w, x, _ = _data(16, 64, 300, seed=7)
    x[:, 5] = 3.0  # constant feature: variance 0, non-zero mean
    x[:, 9] = 0.0  # dead feature
    stats = InputStats(64, StatsNeeds(sq_norm=True, moments=True), "cpu")
    stats.add(x)
    res = dsnot_refine(w, None, stats, 0.5)
    assert torch.all(res.mask.sum(dim=1) == 32)
    assert res.error_after < res.error_before


def test_skip_rules() -> None:
    assert dsnot_skips("model.layers.3.mlp.up_proj")
    assert dsnot_skips("mlp.down_proj")
    assert not dsnot_skips("model.layers.3.self_attn.q_proj")
    assert not dsnot_skips("model.layers.3.mlp.up_proj", skip_layer="no_skip")
    assert dsnot_skips("model.layers.3.self_attn.o_proj", "no_skip", "o_proj")
    assert not dsnot_skips("")
    w, _, stats = _data(8, 32, 100, seed=8)
    init = _wanda(w, stats, 0.5)
    res = dsnot_refine(w, init, stats, 0.5, module_name="model.layers.0.mlp.gate_proj",
                       update_threshold=0.0)
    assert res.swaps == 0 and torch.equal(res.mask, init)


def test_errors() -> None:
    w, _, stats = _data(8, 32, 100, seed=9)
    no_moments = InputStats(32, StatsNeeds(sq_norm=True), "cpu")
    no_moments.add(torch.randn(10, 32))
    with pytest.raises(PruneStudioError):
        dsnot_refine(w, None, no_moments, 0.5)
    with pytest.raises(ConfigError):
        dsnot_refine(w, None, stats, 0.5, n=2, m=3)
    with pytest.raises(ConfigError):
        dsnot_refine(w, torch.zeros(8, 16, dtype=torch.bool), stats, 0.5)
    with pytest.raises(ConfigError):
        dsnot_refine(w, None, stats, 1.5)


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2", "phi3", "gemma"])
def test_module_roles_split_attention_from_mlp(make_model, arch) -> None:
    from prunestudio.core.model import architecture

    names = architecture.layout(make_model(arch)).module_names
    roles = {n: architecture.module_role(n) for n in names}
    assert set(roles.values()) == {"attention", "mlp"}, roles
    # attention comes first in every block of these architectures, and the MLP ends it
    assert roles[names[0]] == "attention" and roles[names[-1]] == "mlp"


@pytest.mark.parametrize("skip", ["mlp", "attention", "none"])
def test_pipeline_dsnot_skip_leaves_the_initial_mask(make_model, tokenizer, skip) -> None:
    """Skipped modules keep exactly the Wanda mask; refined ones swap some weights (masks compared in
    the first block, whose inputs are the same in both runs)."""
    from prunestudio.core.config import PruneConfig
    from prunestudio.core.events import run_to_completion
    from prunestudio.core.model import architecture
    from prunestudio.core.prune.pipeline import iter_prune

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(tokenizer), (6, 24), generator=g)
    ref, model = make_model("llama"), make_model("llama")
    # threshold 0: every module refines until no swap helps; two-pass so both runs see the same inputs
    run_to_completion(iter_prune(ref, ids, PruneConfig(method="wanda", one_pass=False)))
    res = run_to_completion(iter_prune(model, ids, PruneConfig(method="dsnot", dsnot_skip=skip,
                                                               dsnot_threshold=0.0, one_pass=False)))
    lay, lay_ref = architecture.layout(model), architecture.layout(ref)
    for bi, (b, b_ref) in enumerate(zip(lay.blocks, lay_ref.blocks)):
        for name in lay.module_names:
            same = torch.equal(b.get_submodule(name).weight == 0, b_ref.get_submodule(name).weight == 0)
            skipped = skip != "none" and architecture.module_role(name) == skip
            assert res.module_info[f"{bi}.{name}"].get("dsnot_skipped", False) == skipped
            if not skipped:
                assert res.module_info[f"{bi}.{name}"]["swaps"] > 0, name
            if bi == 0:
                assert same == skipped, name
    assert res.global_sparsity == pytest.approx(0.5)
