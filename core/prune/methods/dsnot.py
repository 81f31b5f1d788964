"""DSnoT: training-free refinement of a pruning mask by pruning-and-growing swaps.

Zhang et al., "Dynamic Sparse No Training: Training-Free Fine-tuning for Sparse LLMs" (ICLR 2024);
the details follow ``prune_DSnoT`` in zyxxmu/DSnoT (``lib/prune.py``), re-written and vectorised.

For output row ``i`` the *expected* reconstruction error of a mask is

    r_i = sum_{j pruned} W_ij * E[x_j]          (E[W x] - E[W' x])

Each cycle, every row whose ``|r_i| > update_threshold`` swaps one pruned weight back in
("grow") against one kept weight ("prune"), so the number of pruned weights per row (per N:M
group) never changes:

* grow: among the *initially* pruned weights with ``sign(r) * W*E[x] > 0`` (reviving them moves
  ``r`` towards 0), the largest ``sign(r) * W*E[x] / Var(x)^pow_of_var_regrowing`` — a large
  expected contribution with little variance;
* prune, unstructured: among the initially kept weights with ``sign(r) * W*E[x] < 0`` (removing
  them also moves ``r`` towards 0), the lowest Wanda score ``|W| * ||x||`` (whatever method gave
  the initial mask, as in the reference);
* prune, N:M: the initially kept weight of lowest *initial-method score* in the grown weight's
  group (the swap stays inside the group), as in the reference: ``partner_scores``, the score
  that chose the initial mask (Wanda's ``|W| * ||x||``, magnitude's ``|W|``, SparseGPT's
  ``W^2 / U_jj^2``); Wanda's when not given.

Two swap rules (``rule``):

* ``"reference"`` (default), the reference's: a row applies one pair every cycle while ``|r|``
  exceeds the threshold, whether or not the pair lowers ``|r|``; unstructured rows may overshoot
  and oscillate around 0, N:M rows may see ``|r|`` grow when the group's partner is a poor match.
* ``"decrease"``, Prune Studio's earlier rule: a pair that would not reduce ``|r|`` is not applied;
  its grow candidate is dropped and the row goes on with the next one.

A row stops for good when ``|r| <= update_threshold``, when it has no candidate left, or (with
``keep_sign``) when the swap would flip the sign of ``r``; everything stops after ``max_cycles``.
As in the reference, each weight moves at most once (candidate lists are fixed at the start) and
``keep_sign`` defaults to off for unstructured masks (the reference's effective default,
``--without_same_sign``) and on for N:M. With the default ``skip_layer="mlp"`` the reference
leaves MLP projections untouched; :func:`dsnot_skips` reproduces that by module name, and the
pipeline does the same by role (``PruneConfig.dsnot_skip``, default ``"mlp"``). Measured on the
default model with the ``"decrease"`` rule and the variance over all tokens (32 x 256 C4, 40
evaluation windows): refining the MLP as well made DSnoT worse than its Wanda mask (60%: 279
against Wanda's 255), refining attention only less so (264).

Where the reference's behaviour is undefined it is not copied: when a row runs out of grow (or,
unstructured, prune) candidates of the needed sign the reference goes on indexing kept weights
(its sorted list continues into them), which changes the row's sparsity; here the row ends. In
N:M, when every kept weight of the grown weight's group has already moved, the reference's
``topk`` over all-infinite scores picks an arbitrary weight; here that grow candidate is dropped
and the row goes on with the next one.

Units: the reference accumulates ``sum_tokens(x) / n_sequences`` (the mean times the sequence
length) and compares it with ``--update_threshold 0.1``; here ``r`` uses the per-token mean
(:attr:`InputStats.mean`), so the reference's threshold corresponds to
``update_threshold = 0.1 / seqlen``. ``Var`` is the reference's: the mean over calibration
sequences of each sequence's variance (:attr:`InputStats.batch_var`, gathered when the method's
needs ask for ``batch_var``), not the variance over all tokens. ``pow_of_var_pruning`` exists in
the reference's CLI but is never used there; it is accepted here for parity and likewise has no
effect.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import ConfigError, PruneStudioError
from ..stats import InputStats
from .masks import check_nm, mask_for

__all__ = ["RULES", "DSnoTResult", "dsnot_refine", "dsnot_skips", "expected_error"]

RULES = ("reference", "decrease")  # the swap rules; see the module docstring

_EARLY_EXIT_EVERY = 8  # cycles between the (host-syncing) "any row still active?" checks


@dataclass(frozen=True)
class DSnoTResult:
    mask: torch.Tensor  # bool, True = removed; same count per row (per N:M group) as the input
    swaps: int  # number of grow/prune pairs applied, all rows together
    cycles: int  # cycles in which at least one row swapped or was still searching
    error_before: float  # ||r||_2 over rows for the initial mask (expected output difference)
    error_after: float  # the same for the refined mask


def dsnot_skips(module_name: str, skip_layer: str = "mlp", skip_sub_layer: str = "no_skip") -> bool:
    """Whether the reference would leave this module alone.

    True when a dotted component of ``module_name`` (``"model.layers.3.mlp.up_proj"``) equals
    ``skip_layer`` or its last component equals ``skip_sub_layer``; ``"no_skip"`` disables either.
    """
    parts = module_name.split(".") if module_name else []
    if skip_layer and skip_layer != "no_skip" and skip_layer in parts[:-1]:
        return True
    return bool(parts) and skip_sub_layer not in ("", "no_skip") and parts[-1] == skip_sub_layer


def expected_error(weight: torch.Tensor, mask: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Per-row expected output difference ``r_i = sum_j W_ij * mask_ij * E[x_j]`` (float32)."""
    w = weight.detach().to(torch.float32)
    return (w * mean.to(device=w.device, dtype=torch.float32)).masked_fill(~mask, 0.0).sum(dim=1)


def _first_k(key: torch.Tensor, valid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Column indices of the ``k`` smallest ``key`` among ``valid`` entries of each row, and the
    number of valid entries per row (entries past that count are padding)."""
    inf = torch.tensor(float("inf"), dtype=key.dtype, device=key.device)
    idx = torch.topk(torch.where(valid, key, inf), k, dim=1, largest=False, sorted=True).indices
    return idx, valid.sum(dim=1)


def _pick(order: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
    return order.gather(1, ptr.clamp(max=order.shape[1] - 1).unsqueeze(1)).squeeze(1)


@torch.no_grad()
def dsnot_refine(
    weight: torch.Tensor,
    mask: torch.Tensor | None,
    stats: InputStats,
    sparsity: float,
    n: int = 0,
    m: int = 0,
    max_cycles: int = 50,
    update_threshold: float = 0.1,
    pow_of_var_regrowing: float = 1.0,
    pow_of_var_pruning: float = 1.0,
    skip_layer: str = "mlp",
    skip_sub_layer: str = "no_skip",
    module_name: str = "",
    keep_sign: bool | None = None,
    rule: str = "reference",
    partner_scores: torch.Tensor | None = None,
) -> DSnoTResult:
    """Refine a pruning mask of ``weight`` (out x in, dense values) with DSnoT swaps.

    ``mask`` (True = removed) is the initial mask; ``None`` builds the Wanda mask for ``sparsity``
    (or N:M). ``stats`` must hold ``sq_norm``, the moments and ``batch_var``. ``keep_sign=None``
    means the reference's choice (off unstructured, on N:M). ``rule``: ``"reference"`` or
    ``"decrease"`` (:data:`RULES`). ``partner_scores`` (shaped like the weight): the score that
    ranks an N:M group's kept weights for the swap, lowest first (the initial method's; default
    Wanda's). ``module_name`` is matched against ``skip_layer`` / ``skip_sub_layer``
    (:func:`dsnot_skips`); a skipped module gets its mask back unchanged. Returns a
    :class:`DSnoTResult`; the input mask is not modified. See the module docstring for the
    criteria, the rules and the threshold's units.
    """
    del pow_of_var_pruning  # unused in the reference implementation as well
    if weight.dim() != 2:
        raise ConfigError(f"DSnoT expects a 2-D weight, got shape {tuple(weight.shape)}.")
    rows, cols = weight.shape
    nm = bool(n or m)
    if nm:
        check_nm(n, m, cols, module_name)
    if max_cycles < 0 or update_threshold < 0:
        raise ConfigError("DSnoT needs max_cycles >= 0 and update_threshold >= 0.")
    if rule not in RULES:
        raise ConfigError(f"DSnoT's swap rule must be one of {', '.join(RULES)}, got '{rule}'.")
    if stats.sq_norm is None or not stats.needs.moments or not stats.needs.batch_var:
        raise PruneStudioError(
            "DSnoT needs the input norms, means and per-sequence variances of every module; they "
            "were not collected during calibration."
        )
    if partner_scores is not None and partner_scores.shape != weight.shape:
        raise ConfigError("DSnoT: the N:M partner scores must be shaped like the weight.")
    require_decrease = rule == "decrease"
    device = weight.device
    w = weight.detach().to(torch.float32)
    mean = stats.mean.to(device=device, dtype=torch.float32)
    var = stats.batch_var.to(device=device, dtype=torch.float32)
    wanda = w.abs() * stats.col_norm.to(device=device, dtype=torch.float32)

    if mask is None:
        if not nm and not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"Sparsity must be in [0, 1), got {sparsity}.")
        mask = mask_for(wanda, sparsity, n, m)
    elif mask.shape != weight.shape or mask.dtype != torch.bool:
        raise ConfigError("DSnoT: the initial mask must be a bool tensor shaped like the weight.")
    mask0 = mask.to(device)
    cur = mask0.clone()

    d = w * mean  # expected contribution of each weight to the row's output
    r = d.masked_fill(~mask0, 0.0).sum(dim=1)
    error_before = float(torch.linalg.vector_norm(r))

    if max_cycles == 0 or dsnot_skips(module_name, skip_layer, skip_sub_layer):
        return DSnoTResult(cur, 0, 0, error_before, error_before)
    if keep_sign is None:
        keep_sign = nm

    k = min(max_cycles, cols)  # no row can use more than one candidate per cycle
    denom = var.clamp_min(1e-20).pow(pow_of_var_regrowing).clamp_min(1e-30)
    grow = d / denom
    # Growing candidates for r > 0 (largest positive first) and r < 0 (most negative first).
    grow_pos, n_grow_pos = _first_k(-grow, mask0 & (d > 0), k)
    grow_neg, n_grow_neg = _first_k(grow, mask0 & (d < 0), k)
    if not nm:
        # Pruning candidates: kept weights whose removal moves r towards 0, lowest Wanda first.
        prune_neg, n_prune_neg = _first_k(wanda, ~mask0 & (d < 0), k)  # used when r > 0
        prune_pos, n_prune_pos = _first_k(wanda, ~mask0 & (d > 0), k)  # used when r < 0
        p_pos = torch.zeros(rows, dtype=torch.long, device=device)
        p_neg = torch.zeros_like(p_pos)
    else:
        partner = wanda if partner_scores is None else partner_scores.to(device=device, dtype=torch.float32)
        offsets = torch.arange(m, device=device)
        inf = torch.tensor(float("inf"), device=device)

    g_pos = torch.zeros(rows, dtype=torch.long, device=device)
    g_neg = torch.zeros_like(g_pos)
    active = torch.ones(rows, dtype=torch.bool, device=device)
    swaps = torch.zeros((), dtype=torch.long, device=device)
    cycles = torch.zeros((), dtype=torch.long, device=device)
    row_ids = torch.arange(rows, device=device)

    for cycle in range(max_cycles):
        active &= (r.abs() > update_threshold) & (r != 0)
        pos = r > 0
        g_ptr = torch.where(pos, g_pos, g_neg)
        active &= g_ptr < torch.where(pos, n_grow_pos, n_grow_neg)
        g_idx = torch.where(pos, _pick(grow_pos, g_pos), _pick(grow_neg, g_neg))

        if not nm:
            p_idx = torch.where(pos, _pick(prune_neg, p_neg), _pick(prune_pos, p_pos))
            active &= torch.where(pos, p_neg < n_prune_neg, p_pos < n_prune_pos)
            found = active
        else:
            start = g_idx - g_idx % m
            group = start.unsqueeze(1) + offsets
            prunable = (~cur & ~mask0).gather(1, group)
            local = torch.where(prunable, partner.gather(1, group), inf).argmin(dim=1)
            found = prunable.gather(1, local.unsqueeze(1)).squeeze(1)
            p_idx = start + local

        r_after = r - d[row_ids, g_idx] + d[row_ids, p_idx]
        if keep_sign:
            active &= ~found | (torch.sign(r_after) == torch.sign(r))
        do = active & found
        if require_decrease:
            do &= r_after.abs() < r.abs()

        cur[row_ids, g_idx] = cur[row_ids, g_idx] & ~do
        cur[row_ids, p_idx] = cur[row_ids, p_idx] | do
        r = torch.where(do, r_after, r)
        # The grow candidate is used up: swapped, or dropped (its pair would not reduce |r|, or
        # its N:M group has no kept weight left to trade).
        g_pos += active & pos
        g_neg += active & ~pos
        if not nm:
            p_neg += do & pos
            p_pos += do & ~pos
        swaps += do.sum()
        cycles += active.any()
        if (cycle + 1) % _EARLY_EXIT_EVERY == 0 and not bool(active.any()):
            break

    r_final = d.masked_fill(~cur, 0.0).sum(dim=1)
    return DSnoTResult(
        mask=cur,
        swaps=int(swaps),
        cycles=int(cycles),
        error_before=error_before,
        error_after=float(torch.linalg.vector_norm(r_final)),
    )
