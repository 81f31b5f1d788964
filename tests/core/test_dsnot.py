"""DSnoT: equality with a reference written here from the paper and the reference code's
description (both swap rules, unstructured and N:M, Wanda and magnitude rankings), the reference's
per-sequence variance, the initial masks and rankings of each initial method, preserved sparsity,
lower expected and real reconstruction error than the initial mask."""

from __future__ import annotations

import math

import pytest
import torch
from prunestudio.core.errors import ConfigError, PruneStudioError
from prunestudio.core.prune.methods.dsnot import dsnot_refine, dsnot_skips, expected_error
from prunestudio.core.prune.needs import StatsNeeds
from prunestudio.core.prune.stats import InputStats

DSNOT_NEEDS = StatsNeeds(sq_norm=True, moments=True, batch_var=True)


def _data(rows: int, cols: int, tokens: int, seed: int, mean_scale: float = 2.0, seqs: int = 4,
          shift: float = 1.0):
    """Inputs with non-zero feature means and varied variances, as ``seqs`` sequences whose means
    differ by ``shift`` (so the variance within a sequence is below the variance over all tokens); the
    means dominate when ``mean_scale`` is large (the regime DSnoT's expected-error criterion targets).
    Returns the weight, the tokens ``[seqs, tokens // seqs, cols]`` and their InputStats (fed two
    sequences at a time)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    mu = mean_scale * torch.randn(cols, generator=g)
    sd = torch.empty(cols).uniform_(0.2, 1.0, generator=g)
    offsets = shift * torch.randn(seqs, 1, cols, generator=g)
    x = mu + offsets + sd * torch.randn(seqs, tokens // seqs, cols, generator=g)
    stats = InputStats(cols, DSNOT_NEEDS, "cpu")
    for batch in x.split(2):
        stats.add(batch)
    return w, x, stats


# ---- the reference, written from its description ------------------------------------------------
# Zhang et al. (ICLR 2024) and prune_DSnoT in zyxxmu/DSnoT, read for their rules only. Per output row:
# r = sum over pruned j of W_j * mean_j. Grow list: every column sorted by W_j * mean_j / var_j with
# kept columns counted as 0; r > 0 takes the next from the top, r < 0 the next from the bottom.
# Unstructured prune list: kept columns in ascending Wanda score; r > 0 takes the next with a negative
# W_j * mean_j, r < 0 the next positive one. N:M: the partner is the kept, not yet moved column of
# lowest initial-method score in the grown column's group. A row stops when |r| <= threshold (and, N:M,
# when the swap would change the sign of r); otherwise the reference swaps. Variance: the mean over
# sequences of each sequence's variance. Two places where the reference is undefined end the row
# (candidates of the needed sign used up) or skip the grow column (its group has no kept column
# left), as the implementation documents; `quirks` counts them so a test can demand none.

def reference_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token mean, mean of per-sequence variances, and ||x_j||_2, from ``[seqs, tokens, cols]``."""
    x = x.double()
    flat = x.reshape(-1, x.shape[-1])
    var = torch.stack([((s - s.mean(0)) ** 2).mean(0) for s in x]).mean(0)
    return flat.mean(0), var, flat.pow(2).sum(0).sqrt()


def reference_dsnot(w, mask0, x, n=0, m=0, scores=None, max_cycles=50, thr=0.1, rule="reference",
                    keep_sign=None, quirks=None) -> torch.Tensor:
    mean, var, norm = reference_stats(x)
    w = w.double()
    wanda = w.abs() * norm
    scores = wanda if scores is None else scores.double()
    keep_sign = bool(n) if keep_sign is None else keep_sign
    quirks = [] if quirks is None else quirks
    out = mask0.clone()
    for i in range(w.shape[0]):
        contrib = [float(v) for v in w[i] * mean]
        pruned0 = [bool(v) for v in mask0[i]]
        cols = len(contrib)
        key = [contrib[j] / float(var[j]) if pruned0[j] else 0.0 for j in range(cols)]
        grow_order = sorted(range(cols), key=lambda j: key[j])
        lo, hi = 0, cols - 1
        kept_by_wanda = sorted((j for j in range(cols) if not pruned0[j]), key=lambda j: float(wanda[i, j]))
        neg = [j for j in kept_by_wanda if contrib[j] < 0]
        pos = [j for j in kept_by_wanda if contrib[j] > 0]
        moved = set()
        r = sum(contrib[j] for j in range(cols) if pruned0[j])
        r0 = r
        for _ in range(max_cycles):
            if abs(r) <= thr:
                break
            if r > 0:
                g, hi = grow_order[hi], hi - 1
            else:
                g, lo = grow_order[lo], lo + 1
            if not pruned0[g] or contrib[g] * r <= 0:
                quirks.append(("no grow candidate", i))
                break
            if n:
                start = g - g % m
                free = [j for j in range(start, start + m) if not pruned0[j] and j not in moved]
                if not free:
                    quirks.append(("no partner in group", i))
                    continue
                p = min(free, key=lambda j: float(scores[i, j]))
            else:
                side = neg if r > 0 else pos
                if not side:
                    quirks.append(("no prune candidate", i))
                    break
                p = side[0]
            after = r + contrib[p] - contrib[g]
            if keep_sign and math.copysign(1, after) != math.copysign(1, r0):
                break
            if rule == "decrease" and abs(after) >= abs(r):
                continue  # the grow column is used up, the partner stays available
            if not n:
                side.pop(0)
            moved.add(p)
            out[i, g], out[i, p] = False, True
            r = after
    return out


def _rank_mask(scores: torch.Tensor, sparsity: float, n: int = 0, m: int = 0) -> torch.Tensor:
    """The lowest scores per row (or per group of m), written here rather than taken from core."""
    rows, cols = scores.shape
    if n:
        idx = scores.reshape(rows, cols // m, m).argsort(dim=-1)[..., :n]
        mask = torch.zeros(rows, cols // m, m, dtype=torch.bool)
        return mask.scatter(-1, idx, True).reshape(rows, cols)
    k = int(cols * sparsity)
    return torch.zeros(rows, cols, dtype=torch.bool).scatter(1, scores.argsort(dim=1)[:, :k], True)


def _wanda(w: torch.Tensor, x: torch.Tensor, sparsity: float, n: int = 0, m: int = 0):
    return _rank_mask(w.abs() * reference_stats(x)[2].float(), sparsity, n, m)


def reconstruction_error(w: torch.Tensor, mask: torch.Tensor, x: torch.Tensor) -> float:
    """||W X - W' X||_F over the calibration tokens, W' = W with the mask applied."""
    x = x.reshape(-1, x.shape[-1])
    return float(torch.linalg.matrix_norm(x @ w.masked_fill(~mask, 0.0).T))


CASES = [  # (n, m, ranking of the N:M partner, threshold): thresholds that leave rows still active
    (0, 0, "wanda", 0.5),
    (0, 0, "wanda", 0.0),
    (2, 4, "wanda", 0.5),
    (2, 4, "magnitude", 0.5),
    (4, 8, "magnitude", 0.0),
]


@pytest.mark.parametrize("rule", ["reference", "decrease"])
@pytest.mark.parametrize("n,m,ranking,thr", CASES)
def test_matches_the_reference(n: int, m: int, ranking: str, thr: float, rule: str) -> None:
    w, x, stats = _data(24, 256, 480, seed=1)
    scores = w.abs() if ranking == "magnitude" else None
    init = _rank_mask(w.abs() if ranking == "magnitude" else w.abs() * reference_stats(x)[2].float(), 0.5, n, m)
    quirks: list = []
    expected = reference_dsnot(w, init, x, n, m, scores, thr=thr, rule=rule, quirks=quirks)
    res = dsnot_refine(w, init, stats, 0.5, n, m, update_threshold=thr, rule=rule, partner_scores=scores)
    assert not [q for q in quirks if q[0] != "no partner in group"], quirks  # pure reference behaviour
    assert res.swaps == int((expected & ~init).sum()) > 24
    assert torch.equal(res.mask, expected)


def test_the_rules_differ_and_the_reference_overshoots() -> None:
    """Unstructured, threshold 0: the reference rule swaps every cycle (rows oscillate around r = 0),
    the decreasing rule only while a swap helps, so it makes fewer swaps and no row ends worse."""
    w, x, stats = _data(24, 256, 480, seed=2)
    init = _wanda(w, x, 0.5)
    ref = dsnot_refine(w, init, stats, 0.5, update_threshold=0.0, rule="reference")
    dec = dsnot_refine(w, init, stats, 0.5, update_threshold=0.0, rule="decrease")
    assert ref.swaps == 24 * 50 and ref.cycles == 50  # every row, every cycle
    assert dec.swaps < ref.swaps and not torch.equal(ref.mask, dec.mask)
    r0 = expected_error(w, init, stats.mean).abs()
    assert torch.all(expected_error(w, dec.mask, stats.mean).abs() <= r0 + 1e-5)


def test_variance_is_the_mean_of_per_sequence_variances() -> None:
    """InputStats.batch_var is the reference's variance whatever the batching, and DSnoT uses it:
    with the variance over all tokens (here several times larger) the grow order, hence the mask,
    changes."""
    w, x, stats = _data(24, 256, 480, seed=3)
    mean, var, _ = reference_stats(x)
    torch.testing.assert_close(stats.batch_var.double(), var, rtol=1e-4, atol=1e-6)
    one = InputStats(256, DSNOT_NEEDS, "cpu")
    for seq in x:  # one 2-D sequence at a time gives the same
        one.add(seq)
    torch.testing.assert_close(one.batch_var, stats.batch_var, rtol=1e-5, atol=1e-7)
    pooled = x.reshape(-1, 256).double().var(0, unbiased=False)
    assert float((pooled / var).median()) > 1.5
    init = _wanda(w, x, 0.5)
    res = dsnot_refine(w, init, stats, 0.5, update_threshold=0.0)
    assert torch.equal(res.mask, reference_dsnot(w, init, x, thr=0.0))
    x_pooled = x.reshape(1, -1, 256)  # one sequence: the per-sequence variance is the pooled one
    assert not torch.equal(res.mask, reference_dsnot(w, init, x_pooled, thr=0.0))


@pytest.mark.parametrize("rule", ["reference", "decrease"])
@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_unstructured_keeps_sparsity_and_lowers_error(sparsity: float, rule: str) -> None:
    w, x, stats = _data(32, 128, 512, seed=2, shift=0.2)
    init = _wanda(w, x, sparsity)
    init_copy = init.clone()
    res = dsnot_refine(w, init, stats, sparsity, rule=rule)
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
    if rule == "decrease":
        assert torch.all(r1.abs() <= r0.abs() + 1e-5)  # no row gets worse
    # ... and the real layer-wise error on data whose means dominate
    assert reconstruction_error(w, res.mask, x) < 0.9 * reconstruction_error(w, init, x)


@pytest.mark.parametrize("rule", ["reference", "decrease"])
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm_keeps_groups_and_lowers_error(n: int, m: int, rule: str) -> None:
    w, x, stats = _data(32, 128, 512, seed=3, shift=0.2)
    init = _wanda(w, x, 0.5, n, m)
    res = dsnot_refine(w, init, stats, 0.5, n, m, rule=rule)
    assert torch.all(res.mask.reshape(32, -1, m).sum(dim=-1) == n)
    assert res.swaps > 0
    assert res.error_after < 0.8 * res.error_before
    r0 = expected_error(w, init, stats.mean)
    r1 = expected_error(w, res.mask, stats.mean)
    if rule == "decrease":
        assert torch.all(r1.abs() <= r0.abs() + 1e-5)
    assert torch.all(torch.sign(r1) * torch.sign(r0) >= 0)  # keep_sign is on for N:M
    assert reconstruction_error(w, res.mask, x) < 0.9 * reconstruction_error(w, init, x)


def test_reference_rule_without_threshold_keeps_sparsity() -> None:
    """Threshold 0: rows keep swapping until max_cycles, in pairs."""
    w, x, stats = _data(32, 128, 512, seed=4, mean_scale=0.5)
    init = _wanda(w, x, 0.6)
    res = dsnot_refine(w, init, stats, 0.6, update_threshold=0.0)
    assert torch.all(res.mask.sum(dim=1) == int(128 * 0.6))
    assert res.cycles == 50
    res_nm = dsnot_refine(w, None, stats, 0.5, 2, 4, update_threshold=0.0)
    assert torch.all(res_nm.mask.reshape(32, -1, 4).sum(dim=-1) == 2)


def _hessian_case(seed: int):
    """A weight, its tokens and InputStats that also hold the Hessian (DSnoT on SparseGPT's mask)."""
    w, x, _ = _data(24, 256, 480, seed=seed)
    stats = InputStats(256, StatsNeeds(sq_norm=True, moments=True, hessian=True, batch_var=True), "cpu")
    for batch in x.split(2):
        stats.add(batch)
    return w, x, stats


def _sparsegpt_saliency(w: torch.Tensor, x: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """W^2 / U_jj^2 with U the upper Cholesky factor of (H + damp * mean(diag H))^-1, H = 2/n X^T X."""
    flat = x.reshape(-1, x.shape[-1]).double()
    h = 2.0 * flat.T @ flat / flat.shape[0]
    h += damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    return w.double() ** 2 / torch.diagonal(u) ** 2


@pytest.mark.parametrize("rule", ["reference", "decrease"])
@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
@pytest.mark.parametrize("init", ["wanda", "magnitude", "sparsegpt"])
def test_each_initial_method_s_mask_and_ranking(init: str, structure: str, rule: str) -> None:
    """Through the registry (``PruneConfig.dsnot_rule`` reaches the swap rule): DSnoT starts from
    Wanda's mask, a per-row magnitude mask, or SparseGPT's own mask; an N:M group's partner is ranked
    by the same method's score (|W| x ||x||, |W|, W^2 / U_jj^2); the weights come back dense under
    the refined mask (no SparseGPT update kept)."""
    from prunestudio.core.config import PruneConfig
    from prunestudio.core.prune.methods.registry import prune_module

    w, x, stats = _hessian_case(seed=11)
    cfg = PruneConfig(method="dsnot", dsnot_init=init, structure=structure, dsnot_threshold=0.5,
                      dsnot_rule=rule)
    n, m = cfg.nm
    out = prune_module(w.clone(), stats, 0.5, cfg, n, m, seqlen=1, name="self_attn.q_proj")
    norm = reference_stats(x)[2]
    if init == "wanda":
        scores = w.double().abs() * norm
        start = _rank_mask(scores, 0.5, n, m)
    elif init == "magnitude":
        scores = w.double().abs()
        start = _rank_mask(scores, 0.5, n, m)  # per row, not per matrix
    else:
        scores = _sparsegpt_saliency(w, x)
        start = prune_module(w.clone(), stats, 0.5, PruneConfig(method="sparsegpt", structure=structure),
                             n, m).mask
    expected = reference_dsnot(w, start, x, n, m, scores, thr=0.5, rule=rule)
    assert out.weight is None  # the dense weights under the refined mask
    assert out.info["swaps"] == int((expected & ~start).sum()) > 0
    assert torch.equal(out.mask, expected)
    if n and init != "wanda":  # the test tells the rankings apart
        assert not torch.equal(expected, reference_dsnot(w, start, x, n, m, None, thr=0.5, rule=rule))


@pytest.mark.parametrize("init", ["magnitude", "sparsegpt"])
def test_unrefined_modules_keep_the_starting_outcome(init: str) -> None:
    """dsnot_skip: an MLP module keeps DSnoT's start: the per-row magnitude mask, or SparseGPT's
    whole outcome (its updated weights too, since nothing is revived there)."""
    from prunestudio.core.config import PruneConfig
    from prunestudio.core.prune.methods.registry import prune_module

    w, x, stats = _hessian_case(seed=12)
    out = prune_module(w.clone(), stats, 0.5, PruneConfig(method="dsnot", dsnot_init=init), name="mlp.up_proj")
    assert out.info["dsnot_skipped"] and out.info["swaps"] == 0
    if init == "magnitude":
        assert out.weight is None and torch.equal(out.mask, _rank_mask(w.abs(), 0.5))
    else:
        alone = prune_module(w.clone(), stats, 0.5, PruneConfig(method="sparsegpt"))
        assert torch.equal(out.mask, alone.mask) and torch.equal(out.weight, alone.weight)


def test_rule_setting_cli_and_report() -> None:
    """The rule is a validated setting, the CLI's --dsnot-rule, and a setting DSnoT reports it reads."""
    from prunestudio.core.cli.commands import _recipe_from_args, build_parser
    from prunestudio.core.config import PruneConfig
    from prunestudio.core.prune.methods import registry

    assert PruneConfig().dsnot_rule == "reference"
    with pytest.raises(ConfigError, match="swap rule"):
        PruneConfig(method="dsnot", dsnot_rule="greedy")
    assert "dsnot_rule" in registry.settings_used(PruneConfig(method="dsnot"))
    assert "dsnot_rule" not in registry.settings_used(PruneConfig(method="wanda"))
    args = build_parser().parse_args(["prune", "--method", "dsnot", "--dsnot-rule", "decrease"])
    assert _recipe_from_args(args).prune.dsnot_rule == "decrease"
    assert _recipe_from_args(build_parser().parse_args(["prune"])).prune.dsnot_rule == "reference"


def test_uneven_initial_mask_counts_preserved() -> None:
    """A mask with different counts per row (e.g. SparseGPT's per-block selection) keeps them."""
    w, _, stats = _data(16, 64, 300, seed=5)
    init = torch.rand(16, 64, generator=torch.Generator().manual_seed(0)) < 0.5
    for rule in ("reference", "decrease"):
        res = dsnot_refine(w, init, stats, 0.5, update_threshold=0.0, rule=rule)
        assert torch.equal(res.mask.sum(dim=1), init.sum(dim=1))
    assert res.error_after <= res.error_before  # the decreasing rule never makes it worse


def test_threshold_and_cycles_stop() -> None:
    w, x, stats = _data(16, 64, 300, seed=6)
    init = _wanda(w, x, 0.5)
    huge = dsnot_refine(w, init, stats, 0.5, update_threshold=1e9)
    assert huge.swaps == 0 and torch.equal(huge.mask, init)
    assert huge.error_after == huge.error_before
    one = dsnot_refine(w, init, stats, 0.5, max_cycles=1, update_threshold=0.0)
    assert one.cycles == 1 and 0 < one.swaps <= 16
    assert int((one.mask != init).sum()) == 2 * one.swaps


def test_zero_variance_and_dead_features() -> None:
    w, x, _ = _data(16, 64, 300, seed=7)
    x[..., 5] = 3.0  # constant feature: variance 0, non-zero mean
    x[..., 9] = 0.0  # dead feature
    stats = InputStats(64, DSNOT_NEEDS, "cpu")
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
    w, x, stats = _data(8, 32, 100, seed=8)
    init = _wanda(w, x, 0.5)
    res = dsnot_refine(w, init, stats, 0.5, module_name="model.layers.0.mlp.gate_proj",
                       update_threshold=0.0)
    assert res.swaps == 0 and torch.equal(res.mask, init)


def test_errors() -> None:
    w, _, stats = _data(8, 32, 100, seed=9)
    no_moments = InputStats(32, StatsNeeds(sq_norm=True), "cpu")
    no_moments.add(torch.randn(10, 32))
    with pytest.raises(PruneStudioError):
        dsnot_refine(w, None, no_moments, 0.5)
    pooled_only = InputStats(32, StatsNeeds(sq_norm=True, moments=True), "cpu")
    pooled_only.add(torch.randn(10, 32))
    with pytest.raises(PruneStudioError):  # the variance over all tokens is not DSnoT's
        dsnot_refine(w, None, pooled_only, 0.5)
    with pytest.raises(ConfigError):
        dsnot_refine(w, None, stats, 0.5, rule="sometimes")
    with pytest.raises(ConfigError):
        dsnot_refine(w, None, stats, 0.5, 2, 4, partner_scores=torch.ones(8, 16))
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
