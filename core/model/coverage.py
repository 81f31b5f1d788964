"""How much of the decoder blocks a run prunes: every parameter inside the blocks, sorted into the
weights the run prunes and the rest, each by the rule that leaves it out.

A parameter of a block falls under the first of these that applies:

* **pruned**: the ``weight`` of a module the run prunes (the block's own prunable modules,
  :meth:`BlockLayout.names_of`, after the user's skip patterns), and the fused 3-D expert tensors
  of transformers' experts protocol (:mod:`.experts`: every expert's gate, up and down matrices);
* **state-space parameters** (``A_log``, ``D``, ``dt_bias``, Mamba's time-step projection ``dt_proj``),
  left dense by rule;
* **1-D and biases** (never pruned by any method, and not among the block's weights): norm
  scales, biases (a per-expert bias stack too, though it is 2-D), other vectors (attention sinks);
* **excluded by rule** (2-D or more, left dense on purpose): the weights of prunable modules the
  user's skip patterns name, embedding tables inside a block, convolution kernels, MoE routers;
* **cannot be pruned** (2-D or more, a method would prune it if it could): expert tensors in a
  layout other than transformers' experts protocol (Llama 4's), and any other such weight. A run
  that leaves any of these dense is *partial*.

Only shapes are read, so a model on the meta device (disk offload) is counted as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from . import experts
from .architecture import BlockLayout, is_prunable, is_router, is_time_step_projection

__all__ = ["Coverage", "Group", "RULES", "block_coverage"]

# rule -> (why it is left dense, whether a method would prune it if it could)
RULES: dict[str, tuple[str, bool]] = {
    "norms": ("normalisation scales (1-D), never pruned", False),
    "biases": ("biases, never pruned", False),
    "vectors": ("other 1-D tensors (attention sinks, scales), never pruned", False),
    "skipped": ("weights of modules the skip patterns of the settings leave dense (--skip)", False),
    "embeddings": ("embedding tables inside the blocks, left dense like the model's own embeddings", False),
    "conv_kernels": ("convolution kernels (a few taps per channel), left dense by rule", False),
    "routers": ("mixture-of-experts routers, left dense by rule (they choose which experts run)", False),
    "state_space": ("state-space parameters (A_log, D, dt_bias, the time-step projection dt_proj), left dense "
                    "by rule", False),
    "fused_experts": ("fused 3-D expert tensors in a layout this version cannot prune", True),
    "other": ("weights of 2 or more dimensions that this version does not prune", True),
}
_STATE_SPACE = ("A_log", "D", "dt_bias")


@dataclass(frozen=True)
class Group:
    """Parameters of the blocks left dense by one rule, summed over all blocks."""

    rule: str
    parameters: int
    tensors: int
    names: tuple[str, ...]
    """Parameter names relative to a block (``mlp.experts.gate_up_proj``), in order of first appearance."""

    @property
    def reason(self) -> str:
        return RULES[self.rule][0]

    @property
    def unprunable(self) -> bool:
        """A method would prune these weights if this version could: left dense, they make a run
        partial."""
        return RULES[self.rule][1]


@dataclass(frozen=True)
class Coverage:
    """What a run prunes of the decoder blocks of ``model`` (its class name).

    ``parameters``: every parameter inside the blocks; ``weight_parameters``: those in tensors of 2
    or more dimensions that are not biases (the block weights); ``pruned_parameters``: those of
    the weights the run prunes. Every block parameter is pruned or in exactly one group.
    """

    model: str
    parameters: int
    weight_parameters: int
    pruned_parameters: int
    groups: tuple[Group, ...]

    @property
    def pruned_share(self) -> float:
        """The fraction of the block weights (2-D or more) that the run prunes."""
        return self.pruned_parameters / self.weight_parameters if self.weight_parameters else 0.0

    @property
    def dense_groups(self) -> tuple[Group, ...]:
        """The groups a method would prune but cannot: they stay dense."""
        return tuple(g for g in self.groups if g.unprunable)

    @property
    def partial(self) -> bool:
        """Whether a run leaves dense some block weights a method would normally prune."""
        return bool(self.dense_groups)

    def share(self, group: Group) -> float:
        """``group``'s fraction of all the block parameters."""
        return group.parameters / self.parameters if self.parameters else 0.0

    def dense_share(self) -> float:
        """The fraction of the block parameters that would stay dense though a method would prune them."""
        return sum(self.share(g) for g in self.dense_groups)

    def describe_dense(self) -> str:
        """``the experts (mlp.experts.gate_up_proj, mlp.experts.down_proj: 83% of the block
        parameters) are fused 3-D tensors this version cannot prune``, for every such group."""
        parts = []
        for g in self.dense_groups:
            what = "the experts" if g.rule == "fused_experts" else "the weights"
            verb = ("are fused 3-D tensors in a layout this version cannot prune" if g.rule == "fused_experts"
                    else "are weights this version does not prune")
            share = _pct(self.share(g))
            parts.append(f"{what} ({', '.join(g.names)}: {share} of the block parameters) {verb}")
        return " and ".join(parts)

    def refusal(self) -> str:
        """The sentence a run that would be partial stops with (without ``allow_partial``)."""
        return f"{self.model}: {self.describe_dense()}; a run would leave them dense."

    def note(self) -> str:
        """The note a partial run's report, card and summaries carry."""
        return (f"Partial pruning: only {_pct(self.pruned_share)} of the block weights were pruned; "
                f"{self.describe_dense()}, and were left dense.")

    def to_dict(self) -> dict[str, Any]:
        """The report's ``coverage`` object."""
        return {
            "parameters": self.parameters,
            "weight_parameters": self.weight_parameters,
            "pruned_parameters": self.pruned_parameters,
            "pruned_share": self.pruned_share,
            "partial": self.partial,
            "dense_share": self.dense_share(),
            "excluded": [{"rule": g.rule, "reason": g.reason, "unprunable": g.unprunable,
                          "parameters": g.parameters, "share": self.share(g), "tensors": g.tensors,
                          "names": list(g.names)} for g in self.groups],
        }


def _pct(x: float) -> str:
    p = 100 * x
    if 0 < p < 1:
        return "under 1%"
    if 99 < p < 100:
        return "over 99%"
    return f"{p:.0f}%"


def _matches(name: str, skip: tuple[str, ...]) -> bool:
    return any(s and s in name for s in skip)


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower() or isinstance(
        module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm))


def _is_experts(path: str, module: nn.Module) -> bool:
    return "expert" in type(module).__name__.lower() or any("expert" in p for p in path.split("."))


def _rule(path: str, owner: nn.Module, leaf: str, ndim: int, skip: tuple[str, ...]) -> str:
    """The rule a parameter that the run does not prune falls under (see the module docstring)."""
    if leaf in _STATE_SPACE or is_time_step_projection(path):
        return "state_space"
    if "bias" in leaf:
        return "biases"
    if ndim < 2:
        return "norms" if _is_norm(owner) else "vectors"
    if is_prunable(owner) and leaf == "weight" and _matches(path, skip):
        return "skipped"
    if isinstance(owner, nn.Embedding):
        return "embeddings"
    if isinstance(owner, nn.modules.conv._ConvNd):
        return "conv_kernels"
    if is_router(path, owner):
        return "routers"
    if is_prunable(owner):  # a linear layer the run does not prune, for no rule above
        return "other"
    if _is_experts(path, owner):
        return "fused_experts"
    return "other"


def block_coverage(model: nn.Module, lay: BlockLayout, skip: tuple[str, ...] = ()) -> Coverage:
    """Sort every parameter of ``lay``'s blocks into pruned and excluded-by-rule (see the module
    docstring). ``lay`` is the layout a run prunes (``architecture.layout(model, skip)``); ``skip``
    the same patterns, to name the weights they leave dense. A parameter shared by several blocks
    is counted once."""
    seen: set[int] = set()
    total = weights = pruned = 0
    acc: dict[str, list[Any]] = {}  # rule -> [parameters, tensors, names]
    for i, block in enumerate(lay.blocks):
        prunes = set(lay.names_of(i))
        for owner_path, owner in block.named_modules():
            for leaf, p in owner.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                n = p.numel()
                total += n
                if p.dim() >= 2 and "bias" not in leaf:
                    weights += n
                if owner_path in prunes and leaf == "weight":
                    pruned += n
                    continue
                fused = experts.params_of(owner).get(leaf) if experts.is_fused_experts(owner) else None
                if fused:  # a fused experts tensor: pruned for each of its kinds the run prunes
                    done = sum(experts.expert_name(owner_path, k) in prunes for k in fused)
                    pruned += n * done // len(fused)
                    if done == len(fused):
                        continue
                    n -= n * done // len(fused)
                    rule = "skipped"
                else:
                    rule = _rule(owner_path, owner, leaf, p.dim(), skip)
                g = acc.setdefault(rule, [0, 0, []])
                g[0] += n
                g[1] += 1
                full = f"{owner_path}.{leaf}" if owner_path else leaf
                if full not in g[2]:
                    g[2].append(full)
    groups = tuple(Group(rule, a[0], a[1], tuple(a[2])) for rule in RULES if (a := acc.get(rule)))
    return Coverage(type(model).__name__, total, weights, pruned, groups)
