"""What a pruning run gives back: :class:`PruneResult` (the numbers of the report), and the mark a
model carries while it is only partly pruned (a cancelled or failed run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["PruneResult", "module_sparsity", "mark_incomplete", "is_incomplete", "INCOMPLETE_FLAG"]

INCOMPLETE_FLAG = "_prunestudio_incomplete"


@dataclass
class PruneResult:
    """What a finished run reports (the ``layers`` etc. of the report JSON)."""

    method: str
    sparsity_target: float
    structure: str
    block_sparsity: list[float]
    layers: list[dict[str, Any]]  # [{"index": i, "modules": {name: sparsity}}]
    global_sparsity: float
    seconds: dict[str, float]
    module_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # "i.name" -> extras
    owl: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    complete: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "sparsity_target": self.sparsity_target,
            "structure": self.structure,
            "block_sparsity": self.block_sparsity,
            "global_sparsity": self.global_sparsity,
            "layers": self.layers,
            "seconds": self.seconds,
            "module_info": self.module_info,
            "owl": self.owl,
            "notes": self.notes,
        }


def module_sparsity(module: nn.Module) -> float:
    w = module.weight
    return float((w == 0).sum().item()) / w.numel()


def mark_incomplete(model: nn.Module, value: bool) -> None:
    setattr(model, INCOMPLETE_FLAG, value)


def is_incomplete(model: nn.Module) -> bool:
    return bool(getattr(model, INCOMPLETE_FLAG, False))
