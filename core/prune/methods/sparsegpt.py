"""SparseGPT: one-shot pruning with second-order (OBS) weight updates.

Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"
(ICML 2023). The algorithm follows ``SparseGPT.fasterprune`` of IST-DASLab/sparsegpt
(``sparsegpt.py``), re-written here:

* dead inputs (``H_jj == 0``) get ``H_jj = 1`` and a zero weight column;
* ``H`` is dampened by ``percdamp * mean(diag H)``, inverted through Cholesky, and the upper
  Cholesky factor ``U`` of ``H^-1`` is used (row ``j`` of ``U`` holds the OBS update of column
  ``j`` once columns ``< j`` are fixed, and ``U_jj^2`` is the OBS denominator);
* columns are processed left to right in blocks of ``blocksize``; inside a block every column is
  quantised to "kept or zero", its error ``(w - q) / U_jj`` is spread over the remaining columns
  of the block, and the accumulated errors of the block are applied to all later columns at once
  (lazy batch update);
* unstructured: the pruned entries of a block are its lowest ``w^2 / U_jj^2`` (over the whole
  block, all rows); N:M: in each group of ``m`` columns, the ``n`` lowest of each row.

Unlike the reference (``score <= sorted[k]``, which removes ``k + 1`` entries or more on ties) the
number removed in each block is exact, and chosen so the whole matrix loses exactly
``floor(rows * cols * sparsity)`` weights (block ``[c0, c1)`` removes
``floor(rows*c1*s) - floor(rows*c0*s)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import ConfigError, PruneStudioError
from ...model.devices import one_cpu_thread
from .masks import check_nm

__all__ = ["HessianFactor", "SparseGPTResult", "hessian_factor", "inverse_hessian_factor",
           "inverse_hessian_factor_nosync", "sparsegpt_prune"]


@dataclass(frozen=True)
class SparseGPTResult:
    weight: torch.Tensor  # updated weight, same shape/dtype/device as the input
    mask: torch.Tensor  # bool, True = removed
    damping: float  # relative damping actually used (fraction of mean diag H)
    damping_increased: bool  # True if H + damping was not positive definite at ``percdamp``
    error: float | torch.Tensor  # sum over columns of (w - q)^2 / (2 U_jj^2), as the reference reports
    # ``sync=False`` only: a 0-dim bool tensor, True when the factorisation at ``percdamp`` worked.
    # While it is not checked the result is provisional (``error`` is then a 0-dim tensor too).
    ok: torch.Tensor | None = None


def inverse_hessian_factor(
    hessian: torch.Tensor, percdamp: float = 0.01, max_retries: int = 4
) -> tuple[torch.Tensor, float, bool]:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``.

    ``hessian`` must already have its dead diagonal entries fixed. If ``H + damp`` is not positive
    definite the relative damping is multiplied by 10 (from 1% when ``percdamp`` is 0), at most
    ``max_retries`` times. Returns ``(U, damping_used, damping_increased)``; raises
    :class:`PruneStudioError` when no damping tried works.
    """
    cols = hessian.shape[0]
    if not bool(torch.isfinite(hessian).all()):
        raise PruneStudioError(
            "SparseGPT cannot prune this module: its input Hessian contains NaN or infinite values.",
            hint="The calibration activations overflowed; try float32 calibration or other text.",
        )
    mean_diag = torch.diagonal(hessian).mean()
    eye = torch.eye(cols, dtype=hessian.dtype, device=hessian.device)
    damp = float(percdamp)
    for attempt in range(max_retries + 1):
        h = hessian + (damp * mean_diag) * eye
        chol, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info) == 0 and bool(torch.isfinite(upper).all()):
                return upper, damp, attempt > 0
        if attempt < max_retries:
            damp = damp * 10.0 if damp > 0 else 0.01
    raise PruneStudioError(
        "SparseGPT cannot prune this module: its input Hessian is not positive definite even "
        f"with damping {damp:g} x mean(diag H).",
        details=f"Requested damping {percdamp:g}; tried {max_retries + 1} dampings.",
        hint="Use more calibration samples or another method (Wanda) for this model.",
    )


def inverse_hessian_factor_nosync(hessian: torch.Tensor, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`inverse_hessian_factor` at ``percdamp`` only, without any host synchronisation.

    Returns ``(U, ok)`` where ``ok`` is a 0-dim bool tensor on the device: False when ``H`` is not
    finite, not positive definite, or the factor is not finite (then ``U`` is garbage and the
    caller must redo the module with :func:`inverse_hessian_factor`).
    """
    cols = hessian.shape[0]
    mean_diag = torch.diagonal(hessian).mean()
    eye = torch.eye(cols, dtype=hessian.dtype, device=hessian.device)
    h = hessian + (percdamp * mean_diag) * eye
    chol, info = torch.linalg.cholesky_ex(h)
    del h
    # a failed factor may hold zeros on its diagonal, which cholesky_inverse refuses (an error is a
    # host synchronisation): invert the identity instead, the result is discarded anyway
    chol = torch.where(info == 0, chol, eye)
    hinv = torch.cholesky_inverse(chol)
    del chol
    upper, info2 = torch.linalg.cholesky_ex(hinv, upper=True)
    ok = (info == 0) & (info2 == 0) & torch.isfinite(upper).all()
    return upper, ok


def _validate(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, n: int, m: int,
              blocksize: int, percdamp: float) -> None:
    if weight.dim() != 2:
        raise ConfigError(f"SparseGPT expects a 2-D weight, got shape {tuple(weight.shape)}.")
    cols = weight.shape[1]
    if tuple(hessian.shape) != (cols, cols):
        raise ConfigError(
            f"SparseGPT: Hessian shape {tuple(hessian.shape)} does not match the weight's "
            f"{cols} input features."
        )
    if n or m:
        check_nm(n, m, cols)
    elif not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"Sparsity must be in [0, 1), got {sparsity}.")
    if blocksize <= 0:
        raise ConfigError(f"SparseGPT block size must be positive, got {blocksize}.")
    if percdamp < 0:
        raise ConfigError(f"SparseGPT damping must be >= 0, got {percdamp}.")


def _column_loop(w1: torch.Tensor, err1: torch.Tensor, mask1: torch.Tensor, hinv1: torch.Tensor,
                 d: torch.Tensor, d2: torch.Tensor, count: int, n: int, m: int, nm: bool, sub: int) -> None:
    """Prune the columns of one block in order, spreading each error over the rest of the block.

    The block is walked in sub-blocks of ``sub`` columns (a multiple of ``m`` for N:M): a column's
    error updates the rest of its sub-block at once (rank 1), and a finished sub-block's errors
    update the block's later columns in one product, the same two-level scheme the reference
    uses between blocks (lazy batch updates), applied once more inside the block. Every column
    still sees every earlier column's update before it is pruned; only the order of the sums
    changes. The rank-1 updates touch ``sub`` columns instead of up to ``blocksize``, which is
    what bounds this loop on a CPU (memory traffic, one small kernel per column).
    """
    removed = mask1.to(w1.dtype)  # 1 where the entry is removed (its error is w / d), else 0
    for s0 in range(0, count, sub):
        s1 = min(s0 + sub, count)
        for i in range(s0, s1):
            if nm and i % m == 0:
                group = w1[:, i : i + m]
                score = (group * group) / d2[i : i + m].unsqueeze(0)
                idx = torch.topk(score, n, dim=1, largest=False, sorted=False).indices
                mask1[:, i : i + m].scatter_(1, idx, True)
                removed[:, i : i + m] = mask1[:, i : i + m]
            # error of column i, (w - q) / d: q keeps the entry or zeroes it
            e = err1[:, i]
            torch.mul(w1[:, i], removed[:, i], out=e)
            e.div_(d[i])
            # OBS update of the rest of the sub-block (row i of U is the update direction)
            w1[:, i:s1].addr_(e, hinv1[i, i:s1], alpha=-1.0)
        if s1 < count:
            w1[:, s1:].addmm_(err1[:, s0:s1], hinv1[s0:s1, s1:], alpha=-1.0)


@dataclass(frozen=True)
class HessianFactor:
    """What SparseGPT needs from a module's input Hessian, whatever the module's weight.

    Modules that read the same input (q/k/v, gate/up) share one Hessian and so one factor: the
    pipeline computes it once per shared input (:func:`hessian_factor`) instead of once per module.
    """

    upper: torch.Tensor  # upper Cholesky factor of (H + damping)^-1, dead inputs' diagonal set to 1
    dead: torch.Tensor  # bool per input feature: H_jj == 0 (the weight column is zeroed)
    damping: float
    damping_increased: bool
    ok: torch.Tensor | None = None  # sync=False only, as in SparseGPTResult


def hessian_factor(hessian: torch.Tensor, percdamp: float = 0.01, sync: bool = True,
                   device: torch.device | None = None) -> HessianFactor:
    """Fix dead inputs, damp and factor ``hessian`` (float32 copy; the argument is not modified).

    ``sync=False``: no host synchronisation, at ``percdamp`` only (see :func:`sparsegpt_prune`).
    """
    h = hessian.detach().to(device=device or hessian.device, dtype=torch.float32, copy=True)
    diag = torch.diagonal(h)
    dead = diag == 0
    diag.masked_fill_(dead, 1.0)
    if sync:
        upper, damping, increased = inverse_hessian_factor(h, percdamp)
        return HessianFactor(upper, dead, damping, increased)
    upper, ok = inverse_hessian_factor_nosync(h, percdamp)
    return HessianFactor(upper, dead, float(percdamp), False, ok)


def inner_block(blocksize: int, m: int = 0) -> int:
    """Columns per sub-block of the column loop: 16, or a multiple of ``m`` (N:M), at most ``blocksize``."""
    sub = max(m, (16 // m) * m) if m else 16
    return max(1, min(sub, blocksize))


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
    sync: bool = True,
    factor: HessianFactor | None = None,
) -> SparseGPTResult:
    """Prune ``weight`` (out x in) to ``sparsity`` (or N:M when ``n`` and ``m`` are given).

    ``hessian`` is ``2/n sum x x^T`` of the module's inputs (:attr:`InputStats.hessian`); it is
    not modified. ``factor``: :func:`hessian_factor` of it, when already computed for another
    module with the same input (it must come from this Hessian, ``percdamp`` and ``sync``). With
    N:M the block size is rounded down to a multiple of ``m`` (at least ``m``) so no group
    straddles two blocks. Returns a :class:`SparseGPTResult`.

    ``sync=False`` (GPU pipeline): no host synchronisation at all; the damping is not raised when
    ``H`` is not positive definite, ``result.ok`` says whether it was, and ``result.error`` stays
    a device tensor. A result with ``ok`` False must be recomputed with ``sync=True``.

    Implementation note: each column costs three small kernels (its error, the division, the
    rank-1 update of its sub-block, see :func:`_column_loop`) instead of the reference's seven;
    the values equal the reference loop's up to the order of floating-point sums (``q`` is read
    back from the updated block, since a kept entry's own update is ``0 * U_ii``).
    """
    _validate(weight, hessian, sparsity, n, m, blocksize, percdamp)
    nm = bool(n and m)
    if nm:
        blocksize = max(m, (blocksize // m) * m)
    rows, cols = weight.shape
    w = weight.detach().to(torch.float32, copy=True)
    if factor is None:
        factor = hessian_factor(hessian, percdamp, sync, device=w.device)
    w.masked_fill_(factor.dead.unsqueeze(0), 0.0)
    hinv, ok = factor.upper, factor.ok
    damping, increased = factor.damping, factor.damping_increased
    sub = inner_block(blocksize, m if nm else 0)

    mask = torch.zeros(rows, cols, dtype=torch.bool, device=w.device)
    losses = torch.zeros(rows, dtype=torch.float32, device=w.device)

    for c0 in range(0, cols, blocksize):
        c1 = min(c0 + blocksize, cols)
        count = c1 - c0
        w1 = w[:, c0:c1].clone()
        err1 = torch.empty_like(w1)
        hinv1 = hinv[c0:c1, c0:c1]
        d = torch.diagonal(hinv1)
        d2 = d * d
        mask1 = torch.zeros(rows, count, dtype=torch.bool, device=w.device)

        if not nm:
            k = int(rows * c1 * sparsity) - int(rows * c0 * sparsity)
            if k > 0:
                score = (w1 * w1) / d2.unsqueeze(0)
                idx = torch.topk(score.reshape(-1), k, largest=False, sorted=False).indices
                mask1.view(-1).scatter_(0, idx, True)

        with one_cpu_thread(w.device):
            _column_loop(w1, err1, mask1, hinv1, d, d2, count, n, m, nm, sub)

        # a kept entry's last change was its own zero error, so w1 holds q where not masked
        w[:, c0:c1] = w1.masked_fill_(mask1, 0.0)
        mask[:, c0:c1] = mask1
        losses += (err1 * err1).sum(dim=1) / 2
        if c1 < cols:
            w[:, c1:].addmm_(err1, hinv[c0:c1, c1:], alpha=-1.0)

    total = losses.sum()
    return SparseGPTResult(
        weight=w.to(weight.dtype),
        mask=mask,
        damping=damping,
        damping_increased=increased,
        error=float(total) if sync else total,
        ok=ok,
    )
