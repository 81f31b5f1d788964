"""The workflow steps, always visible on the left, each with a ready / not-ready icon."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import QListWidget, QListWidgetItem, QWidget

from ..state import AppState, ModelStatus, RunStatus
from ..widgets import status_icon


@dataclass(frozen=True)
class Step:
    key: str
    title: str


STEPS = (
    Step("model", "Model"),
    Step("calibration", "Calibration"),
    Step("pruning", "Pruning"),
    Step("run", "Run"),
    Step("evaluate", "Evaluate && export"),
    Step("history", "History && compare"),
)


def step_status(state: AppState) -> dict[str, tuple[str, str]]:
    """``{step: (icon kind, one-line status)}`` computed from the state (no widgets)."""
    out: dict[str, tuple[str, str]] = {}
    ms = state.model_status
    if ms == ModelStatus.LOADING:
        out["model"] = ("busy", "loading…")
    elif ms == ModelStatus.DENSE:
        out["model"] = ("ok", "loaded (dense)")
    elif ms == ModelStatus.PRUNED:
        out["model"] = ("ok", "loaded (pruned)")
    elif ms == ModelStatus.INCOMPLETE:
        out["model"] = ("warn", "partly pruned: reload")
    else:
        out["model"] = ("todo", "not loaded")

    cfg = state.prune_config
    if cfg is not None and not cfg.needs_calibration:
        out["calibration"] = ("ok", "not needed")
    elif state.calib is not None and len(state.calib):
        out["calibration"] = ("ok", f"{len(state.calib)} samples")
    else:
        out["calibration"] = ("todo", "no samples yet")

    out["pruning"] = ("ok", cfg.label() + f" {cfg.sparsity:.0%}") if cfg is not None else ("warn", "invalid setting")

    rs = state.run_status
    if rs == RunStatus.RUNNING:
        out["run"] = ("busy", "running…")
    elif rs == RunStatus.DONE:
        out["run"] = ("ok", "finished")
    elif rs in (RunStatus.CANCELLED, RunStatus.FAILED):
        out["run"] = ("warn", rs.value)
    else:
        ready = state.loaded is not None or ms == ModelStatus.LOADING
        out["run"] = ("todo", "ready to start" if ready and state.calib_ready() and cfg else "not ready")

    if state.export_path is not None:
        out["evaluate"] = ("ok", "exported")
    elif state.exportable():
        out["evaluate"] = ("todo", "ready to export")
    else:
        out["evaluate"] = ("todo", "after a run")
    out["history"] = ("ok", "runs and comparisons")
    return out


class StepList(QListWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setIconSize(QSize(18, 18))
        self.setSpacing(2)
        self.setUniformItemSizes(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setAccessibleName("Workflow steps")
        for i, step in enumerate(STEPS, start=1):
            item = QListWidgetItem(f"{i}  {step.title.replace('&&', '&')}")
            item.setData(Qt.ItemDataRole.UserRole, step.key)
            item.setSizeHint(QSize(180, 44))
            self.addItem(item)
        self.setMinimumWidth(190)
        self.setMaximumWidth(240)

    def update_status(self, status: dict[str, tuple[str, str]]) -> None:
        for i, step in enumerate(STEPS):
            kind, text = status.get(step.key, ("todo", ""))
            item = self.item(i)
            item.setIcon(status_icon(kind, 18))
            title = step.title.replace("&&", "&")
            item.setText(f"{title}\n{text}")
            item.setToolTip(f"Step {i + 1} (Ctrl+{i + 1}): {title} — {text}")
            item.setData(Qt.ItemDataRole.AccessibleDescriptionRole, text)
            item.setData(Qt.ItemDataRole.UserRole + 1, kind)

    def kinds(self) -> dict[str, str]:
        return {STEPS[i].key: self.item(i).data(Qt.ItemDataRole.UserRole + 1) for i in range(self.count())}
