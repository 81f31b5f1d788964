"""Statistics and pruning of the fused experts of a mixture-of-experts block, one expert at a time.

**Which tokens.** Each expert's matrices are pruned as matrices of their own (gate, up and down
projection, the names of :mod:`prunestudio.core.model.experts`), with statistics from exactly the
calibration tokens the router sends to that expert: while a block's statistics are gathered, the
experts module's forward is replaced by :func:`~prunestudio.core.model.experts.routed_forward`,
which computes the same output one expert at a time (checked against the module's own forward on
each block's first batch) and hands every expert its routed tokens (for ``gate_proj`` and
``up_proj``) and its activation (for ``down_proj``). Statistics accumulate in place, one
:class:`InputStats` per expert and input, allocated when the expert first receives tokens; no copy
of the block or of an expert's weights is made (the weights are pruned through views of the fused
tensors).

**Not weighted by the routing weight.** An expert's inputs are its routed tokens as they are, not
scaled by the weight the router gives the expert for that token. This is what llm-compressor does
(its MoE calibration turns every expert into linear layers whose hooks see the expert's plain
inputs; by default it even sends every token through every expert, ``moe_calibrate_all_experts``,
to gather statistics for all of them) and what Wanda and SparseGPT define per linear layer: the
reconstruction of the expert's own output. MoE-Pruner (Xie et al., 2024) instead multiplies
Wanda's input norms by the router's weights, favouring the tokens an expert matters most for; with
top-k routing whose weights are renormalised the weights are close to 1/k for most tokens, and the
per-expert, per-row comparison groups of Wanda and SparseGPT are not changed by a common scale, so
we keep the simpler, reference definition. The routing weights do enter the block's output, so the
next block's inputs are exact.

**Experts that see few tokens.** A calibration set is small and the router uneven: an expert may
receive a handful of tokens or none. Statistics from a handful of tokens rank the weights poorly
(a SparseGPT Hessian from fewer tokens than inputs is singular but for its damping), so an expert
that received fewer than ``PruneConfig.expert_min_tokens`` (default 32) routed tokens is pruned
with statistics from *every* token of the block, as if all were routed to it: its ``gate_proj`` /
``up_proj`` read the experts' input of all tokens (gathered once per block, shared by all such
experts), its ``down_proj`` its own activation on all tokens (an extra pass through the block,
taken only when some expert is short and only computing those experts). This is llm-compressor's
all-experts calibration, applied where routing leaves too little. Each expert's routed token count
and the rule applied (``routed`` or ``all tokens``) are reported per module
(``ModulePruned.info["experts"]``), in the report's ``module_info`` and in the GUI's expert view.
Magnitude needs no data: no tokens are counted.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import PruneConfig
from ..errors import PruneStudioError
from ..model import experts as fused
from ..model.devices import one_cpu_thread
from . import output_error
from .methods import SharedInputCache, prune_module
from .needs import StatsNeeds
from .stats import InputStats

__all__ = ["ALL_TOKENS", "ROUTED", "ExpertStats", "prune_experts"]

ROUTED = "routed"
ALL_TOKENS = "all tokens"


class ExpertStats:
    """Per-expert input statistics of one fused experts module (``path`` inside its block).

    :meth:`install` replaces the module's forward with the routed one for as long as statistics
    are gathered; :meth:`remove` puts it back. ``kinds`` are the matrix kinds the run prunes
    (``gate_proj``, ``up_proj``, ``down_proj``); only the inputs they read are gathered.
    """

    def __init__(self, module: nn.Module, path: str, kinds: tuple[str, ...], needs: StatsNeeds,
                 device: torch.device, min_tokens: int) -> None:
        self.module, self.path, self.needs, self.device = module, path, needs, device
        self.min_tokens = int(min_tokens)
        self.E = fused.num_experts(module)
        reads = {m.kind: m.reads for m in fused.matrices(module)}
        self.kinds = tuple(kinds)
        self._want_input = any(reads[k] == "input" for k in kinds)
        self._want_hidden = any(reads[k] == "hidden" for k in kinds)
        self.tokens = [0] * self.E
        self.input: list[InputStats | None] = [None] * self.E
        self.hidden: list[InputStats | None] = [None] * self.E
        self.all_input: InputStats | None = None  # every token of the experts' input
        self.all_hidden: dict[int, InputStats] = {}  # short experts' activations on every token
        self._original: Callable[..., Any] | None = None
        self._signature = inspect.signature(module.forward)
        self._checked = False
        self._top_up: list[int] | None = None

    # ---- the forward pass -------------------------------------------------------------------

    def install(self) -> None:
        if self._original is None:
            self._original = self.module.forward
            self.module.forward = self._forward  # an instance attribute shadows the class's

    def remove(self) -> None:
        if self._original is not None:
            self.module.__dict__.pop("forward", None)
            self._original = None

    def _args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bound = self._signature.bind(*args, **kwargs)
        vals = [v for v in bound.arguments.values() if isinstance(v, torch.Tensor)]
        if len(vals) < 3:
            raise PruneStudioError(f"The experts of {self.path} were called without their routing "
                                   "(token indices and weights), so they cannot be pruned per expert.")
        return vals[0], vals[1], vals[2]

    def _forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        hidden, idx, weights = self._args(args, kwargs)
        assert self._original is not None
        if self._top_up is not None:
            self._record_all_tokens(hidden)
            return self._original(*args, **kwargs)
        if self._want_input:
            self._stats_all_input().add(hidden.reshape(-1, hidden.shape[-1]))
        out = fused.routed_forward(self.module, hidden, idx, weights, on_expert=self._record)
        if not self._checked:
            try:
                fused.check_forward(self.module, self._original, hidden, idx, weights, out)
            except fused.ExpertsForwardMismatch as e:
                raise PruneStudioError(
                    f"The experts of {self.path} ({type(self.module).__name__}) do not compute what "
                    "transformers' experts protocol says, so Prune Studio cannot tell which tokens reach "
                    "which expert.", hint="Leave them dense with --skip experts (the run is then partial).",
                    details=str(e)) from None
            self._checked = True
        return out

    def _stats_all_input(self) -> InputStats:
        if self.all_input is None:
            self.all_input = InputStats(int(self.module_input_width()), self.needs, self.device)
        return self.all_input

    def module_input_width(self) -> int:
        return fused.matrix_shape(self.module, fused.matrices(self.module)[0].kind)[1]

    def _record(self, e: int, token: torch.Tensor, x: torch.Tensor, h: torch.Tensor) -> None:
        self.tokens[e] += int(x.shape[0])
        if self._want_input:
            if self.input[e] is None:
                self.input[e] = InputStats(x.shape[-1], self.needs, self.device)
            self.input[e].add(x)
        if self._want_hidden:
            if self.hidden[e] is None:
                self.hidden[e] = InputStats(h.shape[-1], self.needs, self.device)
            self.hidden[e].add(h)

    # ---- experts short of tokens -------------------------------------------------------------

    def short(self) -> list[int]:
        """The experts that received fewer than ``min_tokens`` routed tokens."""
        return [e for e in range(self.E) if self.tokens[e] < self.threshold]

    @property
    def threshold(self) -> int:
        """Routed tokens an expert needs to be pruned with its own: ``min_tokens``, at least 1."""
        return max(self.min_tokens, 1)

    def needs_top_up(self) -> bool:
        """Whether a second pass must gather short experts' activations on every token."""
        return self._want_hidden and any(e not in self.all_hidden for e in self.short())

    def begin_top_up(self) -> None:
        self._top_up = [e for e in self.short() if e not in self.all_hidden]

    def end_top_up(self) -> None:
        self._top_up = None

    def _record_all_tokens(self, hidden: torch.Tensor) -> None:
        assert self._top_up is not None
        x = hidden.reshape(-1, hidden.shape[-1])
        want = set(self._top_up)
        # route every token to every short expert, with weight 0: only the activations are wanted
        idx = torch.tensor(self._top_up, device=x.device).expand(x.shape[0], len(self._top_up))
        zero = torch.zeros(idx.shape, dtype=x.dtype, device=x.device)

        def record(e: int, token: torch.Tensor, xe: torch.Tensor, h: torch.Tensor) -> None:
            if e in want:
                if e not in self.all_hidden:
                    self.all_hidden[e] = InputStats(h.shape[-1], self.needs, self.device)
                self.all_hidden[e].add(h)

        fused.routed_forward(self.module, x, idx, zero, on_expert=record)

    # ---- what pruning reads ------------------------------------------------------------------

    def rule(self, e: int) -> str:
        return ALL_TOKENS if self.tokens[e] < self.threshold else ROUTED

    def stats_for(self, e: int, kind: str) -> InputStats:
        """The statistics expert ``e``'s ``kind`` matrix is pruned with (see the module docstring)."""
        reads = next(m.reads for m in fused.matrices(self.module) if m.kind == kind)
        if self.rule(e) == ROUTED:
            st = self.input[e] if reads == "input" else self.hidden[e]
        else:
            st = self.all_input if reads == "input" else self.all_hidden.get(e)
        if st is None:
            raise PruneStudioError(f"Expert {e} of {self.path} has no statistics for its {kind} "
                                   "(it received no calibration tokens).")
        return st


def prune_experts(module: nn.Module, path: str, kinds: tuple[str, ...], stats: ExpertStats | None,
                  sparsity: float, cfg: PruneConfig, n: int, m: int, seqlen: int,
                  should_stop: Callable[[], bool]) -> dict[str, dict[str, Any]]:
    """Prune every expert's ``kinds`` matrices of the fused experts ``module`` in place, expert by
    expert (the expert's gate and up matrices share their input's derived values, as q/k/v do).

    Returns, per kind, ``zeros`` and ``numel`` over all experts and ``info``: the report numbers,
    with ``experts`` = per-expert ``sparsity``, ``tokens`` (routed calibration tokens; None without
    calibration data) and ``rule``; ``mask`` is expert 0's mask for the previews.
    """
    from ..errors import Cancelled

    E = fused.num_experts(module)
    out: dict[str, dict[str, Any]] = {k: {"zeros": [], "numel": 0, "infos": [], "mask": None} for k in kinds}
    shared = SharedInputCache()
    with torch.no_grad():
        for e in range(E):
            if should_stop():
                raise Cancelled()
            for kind in kinds:
                view = fused.expert_weight(module, kind, e)
                st = stats.stats_for(e, kind) if stats is not None else None
                w = view.detach().to(torch.float32)
                with one_cpu_thread(w.device):
                    dense = output_error.dense_outputs(st, w)
                    outcome = prune_module(w, st, sparsity, cfg, n, m, seqlen, f"{path}[{e}].{kind}",
                                           sync=True, shared=shared)
                    if outcome.weight is not None:
                        view.copy_(outcome.weight.to(view.dtype))
                    view.masked_fill_(outcome.mask.to(view.device), 0)
                    rec = out[kind]
                    if dense is not None:
                        assert st is not None
                        err = output_error.measure(st, dense, view)
                        rec.setdefault("err", []).append(torch.stack([err["err_sq"], err["ref_sq"]]))
                rec = out[kind]
                rec["zeros"].append(outcome.mask.sum())
                rec["numel"] += outcome.mask.numel()
                rec["infos"].append(outcome.info)
                if e == 0:
                    rec["mask"] = outcome.mask
            shared.clear()
    result: dict[str, dict[str, Any]] = {}
    for kind, rec in out.items():
        zeros = torch.stack(rec["zeros"]).tolist()
        per = rec["numel"] // E
        info: dict[str, Any] = {"experts": {
            "sparsity": [z / per for z in zeros],
            "tokens": list(stats.tokens) if stats is not None else None,
            "rule": [stats.rule(e) for e in range(E)] if stats is not None else None,
            "min_tokens": stats.min_tokens if stats is not None else None,
        }}
        if rec.get("err"):
            sq = torch.stack(rec["err"]).double().cpu()  # [E, 2]: squared error, squared reference
            info["experts"]["output_error"] = (sq[:, 0] / sq[:, 1].clamp_min(1e-30)).sqrt().tolist()
            info["output_error"] = float((sq[:, 0].sum() / sq[:, 1].sum().clamp_min(1e-30)).sqrt())
        errs = [i.get("error") for i in rec["infos"] if isinstance(i.get("error"), (int, float))]
        if errs:
            info["error"] = float(sum(errs))
        damped = [e for e, i in enumerate(rec["infos"]) if i.get("damping_increased")]
        if damped:
            info["damping_increased_experts"] = damped
        swaps = [i.get("swaps") for i in rec["infos"] if isinstance(i.get("swaps"), (int, float))]
        if swaps:
            info["swaps"] = int(sum(swaps))
        result[kind] = {"zeros": int(sum(zeros)), "numel": rec["numel"], "info": info, "mask": rec["mask"]}
    return result
