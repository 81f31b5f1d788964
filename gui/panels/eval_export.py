"""The Evaluate step's export group: the folder, Export / Open folder / Open in Ollama, the export's
progress and the partial-run warning. Its job runs in the Evaluate panel's job (one status line,
one Cancel), like :mod:`.eval_try`'s pane."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtWidgets import QCheckBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QProgressBar, QPushButton

from .. import tasks
from ..state import ModelStatus
from ..widgets import PathEdit, hint_label
from . import eval_try

if TYPE_CHECKING:
    from .eval import EvalPanel


class ExportBox:
    """The group box and what its buttons do."""

    def __init__(self, panel: "EvalPanel") -> None:
        self.panel = panel
        self.state = panel.state
        self.box = QGroupBox("Export the pruned model")
        eform = QFormLayout(self.box)
        self.out_dir = PathEdit("dir", "Export folder", key="export", placeholder="a new or empty folder")
        self.out_dir.setToolTip("Where the pruned model, its tokenizer, the report and a model card are written.")
        self.overwrite = QCheckBox("Replace the folder if it is not empty")
        self.export_button = QPushButton("E&xport")
        self.export_button.setToolTip("Write the pruned model with safetensors; nothing is left half-written on failure.")
        self.open_button = QPushButton("Open &folder")
        self.open_button.setEnabled(False)
        self.ollama_button = QPushButton("Open in Olla&ma…")
        self.ollama_button.setEnabled(False)
        self.ollama_button.setToolTip("Write a Modelfile into the export folder and show the `ollama create` command.")
        self.export_bar = QProgressBar()
        self.export_bar.setRange(0, 4)
        self.export_bar.setValue(0)
        self.partial_note = QLabel()
        self.partial_note.setWordWrap(True)
        self.partial_note.setVisible(False)
        eform.addRow(self.partial_note)
        lab = QLabel("Export f&older:")
        lab.setBuddy(self.out_dir.edit)
        eform.addRow(lab, self.out_dir)
        eform.addRow(self.overwrite)
        eb = QHBoxLayout()
        for w in (self.export_button, self.open_button, self.ollama_button):
            eb.addWidget(w)
        eb.addWidget(self.export_bar, 1)
        eform.addRow(eb)
        eform.addRow(hint_label("Pruned weights are stored as zeros in dense tensors: the files are not "
                                "smaller, and llama.cpp, Ollama, vLLM and PyTorch run the model no faster "
                                "(the model card says what each runtime does)."))
        self.export_button.clicked.connect(self.export)
        self.open_button.clicked.connect(panel.open_export)
        self.ollama_button.clicked.connect(lambda: eval_try.open_in_ollama(panel))

    def partial_text(self) -> str:
        """The last run's partial-pruning note ("" when it pruned every block weight it should)."""
        run = self.state.run
        report = run.report if run is not None else {}
        if not (report.get("coverage") or {}).get("partial"):
            return ""
        return next((n for n in report.get("notes", []) if n.startswith("Partial")), "Partial pruning.")

    def suggested_folder(self) -> str:
        run = self.state.run
        if run is None:
            return ""
        model = re.sub(r"[^A-Za-z0-9_.-]+", "-", (run.loaded.name if run.loaded else "model")).strip("-")
        r = run.result
        name = f"{model}-{r.method}-{r.structure.replace(':', 'of')}-{round(r.sparsity_target * 100)}"
        if self.partial_text():
            name += "-partial"
        base = Path(self.panel.settings.get("export_parent", str(Path.home() / "prunestudio-exports")))
        return str(base / name)

    def export(self) -> None:
        panel = self.panel
        if not self.state.exportable() or self.state.run is None:
            panel.status.set("warn", "There is no completely pruned model to export: finish a run first "
                                     "(a cancelled or failed run is never exported).")
            return
        out = self.out_dir.text() or self.suggested_folder()
        self.out_dir.setText(out)
        panel.settings.set("export_parent", str(Path(out).parent))
        self.export_bar.setValue(0)
        export = functools.partial(tasks.export, samples=panel.try_it.card_samples())
        panel.start_job(export, self.state.run, out, self.overwrite.isChecked(), name="export",
                        busy_text=f"Exporting to {out}…", on_done=self._exported)

    def _exported(self, done: tasks.Exported) -> None:
        self.state.set_exported(done.path, done.report)
        self.export_bar.setValue(self.export_bar.maximum())
        if (done.report.get("coverage") or {}).get("partial"):
            self.panel.status.set("warn", f"Exported to {done.path}, marked as partly pruned in its model "
                                          "card and report.")
        else:
            self.panel.status.set("ok", f"Exported to {done.path}.")

    def progress(self, done: int, detail: Any) -> None:
        self.export_bar.setValue(done)
        self.panel.status.set("busy", f"Exporting: {detail}")

    def refresh(self) -> None:
        st = self.state
        note = self.partial_text() if st.model_status == ModelStatus.PRUNED else ""
        self.partial_note.setText(f"⚠ {note} The export's model card and report say so." if note else "")
        self.partial_note.setVisible(bool(note))
        self.export_button.setEnabled(not st.busy and st.exportable())
        self.open_button.setEnabled(st.export_path is not None)
        self.ollama_button.setEnabled(not st.busy and st.export_path is not None)
        if not self.out_dir.text() and st.run is not None:
            self.out_dir.edit.setPlaceholderText(self.suggested_folder())
