"""Step 5: perplexity of the dense and the pruned model, optional zero-shot tasks, and export."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QUrl
from PySide6.QtGui import QAction, QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ...core.calib.textsources import PRESETS
from ...core.evaluate.zeroshot import TASKS
from ...core.events import PhaseDone, PhaseProgress, PhaseStarted
from ...core.run.evaluation import EvalSettings
from .. import tasks
from ..jobs import PanelJob
from ..settings import Settings
from ..state import AppState, ModelStatus
from ..widgets import PathEdit, StatusLine, fmt_float, hint_label, spin

WIKITEXT2_TEST = "hf:Salesforce/wikitext:wikitext-2-raw-v1:test"
EVAL_FILTERS = "Text (*.txt *.raw *.tokens *.jsonl *.json *.parquet *.gz);;All files (*)"


def open_folder(path: Path) -> bool:
    """Show ``path`` in the file manager (replaced in tests)."""
    return QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))


def _public_name(src: str) -> str:
    """A source as the table and the messages name it: a file by its name, anything else as given."""
    return Path(src).name if ("/" in src or "\\" in src) and not src.startswith("hf:") else src


def _table(headers: list[str]) -> QTableWidget:
    t = QTableWidget(0, len(headers))
    t.setHorizontalHeaderLabels(headers)
    t.verticalHeader().setVisible(False)
    t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    t.horizontalHeader().setStretchLastSection(True)
    t.setAlternatingRowColors(True)
    t.setMinimumHeight(90)
    return t


class EvalPanel(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.settings = Settings("evaluate")

        # ---- perplexity --------------------------------------------------------------------
        ppl = QGroupBox("Perplexity (lower is better)")
        pform = QFormLayout(ppl)
        self.source = PathEdit("open", "Choose an evaluation text", EVAL_FILTERS, key="eval-file",
                               placeholder="a file such as wiki.test.raw, hf:NAME[:CONFIG[:SPLIT]] or a preset")
        self.source.setToolTip("The text the perplexity is measured on (the papers use the WikiText-2 test split).")
        self.presets = QToolButton()
        self.presets.setText("Presets")
        self.presets.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.presets)
        for label, src in [("WikiText-2 test (Hugging Face)", WIKITEXT2_TEST)] + [
                (p.label, name) for name, p in PRESETS.items()]:
            act = QAction(label, menu)
            act.triggered.connect(lambda _c=False, s=src: self.source.setText(s))
            menu.addAction(act)
        self.presets.setMenu(menu)
        row = QHBoxLayout()
        row.addWidget(self.source, 1)
        row.addWidget(self.presets)
        lab = QLabel("Evaluation &text:")
        lab.setBuddy(self.source.edit)
        pform.addRow(lab, row)
        self.seqlen = spin(16, 32768, 512, "Tokens per evaluation window (2048 in the papers for 7B models).", step=64)
        self.windows = spin(0, 100000, 32, "Evaluate at most this many windows to keep it quick (0 = the whole text).")
        self.windows.setSpecialValueText("all")
        sl = QHBoxLayout()
        l1, l2 = QLabel("Window &length:"), QLabel("Max &windows:")
        l1.setBuddy(self.seqlen)
        l2.setBuddy(self.windows)
        for w in (l1, self.seqlen, l2, self.windows):
            sl.addWidget(w)
        sl.addStretch(1)
        pform.addRow(sl)
        btns = QHBoxLayout()
        self.dense_button = QPushButton("Evaluate &dense")
        self.dense_button.setToolTip("Perplexity of the model before pruning (cached per model and settings).")
        self.pruned_button = QPushButton("Evaluate p&runed")
        self.pruned_button.setToolTip("Perplexity of the pruned model of the last run.")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        for b in (self.dense_button, self.pruned_button, self.cancel_button):
            btns.addWidget(b)
        btns.addStretch(1)
        pform.addRow(btns)
        self.ppl_table = _table(["Evaluation text", "Window", "Windows read", "Dense", "Pruned", "Change"])
        self.ppl_table.horizontalHeaderItem(1).setToolTip("Tokens per evaluation window.")
        self.ppl_table.horizontalHeaderItem(2).setToolTip(
            "How many windows the perplexity was measured on (the text may hold fewer than the limit).")
        pform.addRow(self.ppl_table)
        self.ppl_note = hint_label("The dense perplexity can only be measured before pruning: tick "
                                   "'Evaluate the dense model first' in step 4, or press Evaluate dense now.")
        pform.addRow(self.ppl_note)

        # ---- zero-shot ---------------------------------------------------------------------
        zs = QGroupBox("Zero-shot tasks (optional)")
        zl = QVBoxLayout(zs)
        grid = QGridLayout()
        self.task_boxes: dict[str, QCheckBox] = {}
        for i, name in enumerate(TASKS):
            cb = QCheckBox(name)
            cb.setToolTip(f"Multiple-choice accuracy on {name}, scored like lm-evaluation-harness.")
            self.task_boxes[name] = cb
            grid.addWidget(cb, i // 4, i % 4)
        zl.addLayout(grid)
        zform = QFormLayout()
        self.task_dir = PathEdit("dir", "Folder with the task files", key="task-dir",
                                 placeholder="empty: download the questions from the Hugging Face hub")
        self.task_dir.setToolTip("A folder holding the tasks' question files, for offline use.")
        self.limit = spin(0, 100000, 100, "Questions per task (0 = all); fewer is quicker and noisier.")
        self.limit.setSpecialValueText("all")
        zform.addRow("Task data:", self.task_dir)
        zform.addRow("Questions per task:", self.limit)
        zl.addLayout(zform)
        self.zs_button = QPushButton("Run &zero-shot")
        self.zs_button.setToolTip("Evaluate the model in memory (dense or pruned) on the ticked tasks.")
        zb = QHBoxLayout()
        zb.addWidget(self.zs_button)
        zb.addStretch(1)
        zl.addLayout(zb)
        self.zs_table = _table(["Model", "Task", "acc", "acc_norm", "Questions"])
        zl.addWidget(self.zs_table)

        # ---- export ------------------------------------------------------------------------
        ex = QGroupBox("Export the pruned model")
        eform = QFormLayout(ex)
        self.out_dir = PathEdit("dir", "Export folder", key="export", placeholder="a new or empty folder")
        self.out_dir.setToolTip("Where the pruned model, its tokenizer, the report and a model card are written.")
        self.overwrite = QCheckBox("Replace the folder if it is not empty")
        self.export_button = QPushButton("E&xport")
        self.export_button.setToolTip("Write the pruned model with safetensors; nothing is left half-written on failure.")
        self.open_button = QPushButton("Open &folder")
        self.open_button.setEnabled(False)
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
        for w in (self.export_button, self.open_button):
            eb.addWidget(w)
        eb.addWidget(self.export_bar, 1)
        eform.addRow(eb)
        eform.addRow(hint_label("Pruned weights are stored as zeros in dense tensors: the files are not "
                                "smaller, and llama.cpp, Ollama, vLLM and PyTorch run the model no faster "
                                "(the model card says what each runtime does)."))

        self.status = StatusLine()
        self.job = PanelJob(state, self.status)
        left = QVBoxLayout()
        left.addWidget(ppl)
        left.addWidget(ex)
        left.addStretch(1)
        right = QVBoxLayout()
        right.addWidget(zs)
        right.addStretch(1)
        cols = QHBoxLayout()
        cols.addLayout(left, 1)
        cols.addLayout(right, 1)
        lay = QVBoxLayout(self)
        lay.addWidget(self.status)
        lay.addLayout(cols, 1)

        # ---- wiring ------------------------------------------------------------------------
        self.source.changed.connect(self._settings_changed)
        self.seqlen.valueChanged.connect(self._settings_changed)
        self.windows.valueChanged.connect(self._settings_changed)
        self.dense_button.clicked.connect(self.evaluate_dense)
        self.pruned_button.clicked.connect(self.evaluate_pruned)
        self.cancel_button.clicked.connect(self.cancel)
        self.zs_button.clicked.connect(self.run_zeroshot)
        self.export_button.clicked.connect(self.export)
        self.open_button.clicked.connect(self.open_export)
        for sig in (state.model_changed, state.run_changed, state.busy_changed, state.config_changed):
            sig.connect(self._refresh)
        state.recipe_applied.connect(self.apply_recipe)
        self._restore()
        self._settings_changed()

    # ---- settings ----------------------------------------------------------------------------
    def eval_settings(self) -> EvalSettings | None:
        src = self.source.text()
        if not src:
            return None
        return EvalSettings(src, self.seqlen.value(), self.windows.value() or None)

    def _settings_changed(self, *_a: Any) -> None:
        self.state.set_eval_settings(self.eval_settings())
        s = self.settings
        s.set("source", self.source.text())
        s.set("seqlen", self.seqlen.value())
        s.set("windows", self.windows.value())

    def _restore(self) -> None:
        s = self.settings
        self.source.setText(s.get("source", ""))
        self.seqlen.setValue(s.get("seqlen", 512))
        self.windows.setValue(s.get("windows", 32))
        self.task_dir.setText(s.get("task_dir", ""))
        self.limit.setValue(s.get("limit", 100))

    def apply_recipe(self, recipe: Any) -> None:
        if recipe.eval_ppl:
            self.source.setText(recipe.eval_ppl[0])
        if recipe.eval_seqlen:
            self.seqlen.setValue(recipe.eval_seqlen)
        if recipe.eval_max_windows:
            self.windows.setValue(recipe.eval_max_windows)

    # ---- perplexity --------------------------------------------------------------------------
    def evaluate_dense(self) -> None:
        es = self.eval_settings()
        if es is None:
            self.status.set("warn", "Choose an evaluation text first.")
            return
        if self.state.model_status != ModelStatus.DENSE:
            self.status.set("warn", "The model in memory is pruned; the dense perplexity must be measured "
                                    "before pruning (tick 'Evaluate the dense model first' in step 4).")
            return
        cached = self.state.cached_dense(es)
        if cached is not None:
            self._fill_ppl_table()
            self.status.set("ok", f"Dense perplexity {cached:.3f} (cached).")
            return
        self._start(tasks.evaluate_dense, self.state.loaded, self.state.model_args, es,
                    name="evaluating the dense model", busy_text="Evaluating the dense model…", on_done=self._dense_done)

    def evaluate_pruned(self) -> None:
        es = self.eval_settings()
        if es is None:
            self.status.set("warn", "Choose an evaluation text first.")
            return
        if not self.state.exportable():
            self.status.set("warn", "There is no completely pruned model in memory; run step 4 first.")
            return
        self._start(tasks.evaluate, self.state.loaded, es, "ppl-pruned", name="evaluating the pruned model",
                    busy_text="Evaluating the pruned model…", on_done=lambda ppl: self._pruned_done(es, ppl))

    def measured_on(self, es: EvalSettings) -> str:
        """"wiki.test.raw, 32 windows of 512 tokens": what a perplexity with ``es`` was measured on."""
        n = self.state.windows_read(es)
        windows = f"{n} window{'s' if n != 1 else ''}" if n is not None else "windows"
        return f"{_public_name(es.source)}, {windows} of {es.seqlen} tokens"

    def _pruned_done(self, es: EvalSettings, ppl: float) -> None:
        self.state.set_pruned_ppl(es, ppl)
        self.status.set("ok", f"Pruned perplexity {ppl:.3f} on {self.measured_on(es)}.")

    def _dense_done(self, ppl: float) -> None:
        es = self.eval_settings()
        self.status.set("ok", f"Dense perplexity {ppl:.3f}" + (f" on {self.measured_on(es)}." if es else "."))
        self._fill_ppl_table()

    def _fill_ppl_table(self) -> None:
        t = self.ppl_table
        rows = self.state.ppl_table()
        t.setRowCount(len(rows))
        for r, (src, L, nw, d, p) in enumerate(rows):
            change = f"{(p / d - 1) * 100:+.1f} %" if d and p else "–"
            read = self.state.windows_read(EvalSettings(src, L, nw))
            windows = str(read) if read is not None else ("all" if not nw else f"up to {nw}")
            for c, text in enumerate((_public_name(src), str(L), windows, fmt_float(d), fmt_float(p), change)):
                item = QTableWidgetItem(text)
                tip = src if c == 0 else text
                if c == 2 and read is not None:
                    tip = f"{read} windows of {L} tokens were read (limit: {nw or 'none'})."
                item.setToolTip(tip)
                t.setItem(r, c, item)

    # ---- zero-shot ---------------------------------------------------------------------------
    def chosen_tasks(self) -> list[str]:
        return [n for n, cb in self.task_boxes.items() if cb.isChecked()]

    def run_zeroshot(self) -> None:
        names = self.chosen_tasks()
        if not names:
            self.status.set("warn", "Tick at least one zero-shot task.")
            return
        if self.state.loaded is None or self.state.model_status not in (ModelStatus.DENSE, ModelStatus.PRUNED):
            self.status.set("warn", "Load a model (or finish a run) first.")
            return
        self.settings.set("task_dir", self.task_dir.text())
        self.settings.set("limit", self.limit.value())
        which = "dense" if self.state.model_status == ModelStatus.DENSE else "pruned"
        self._start(tasks.zeroshot, self.state.loaded, names, self.task_dir.text() or None,
                    self.limit.value() or None, name="zero-shot evaluation",
                    busy_text=f"Zero-shot evaluation of the {which} model…",
                    on_done=lambda res: self._zs_done(which, res))

    def _zs_done(self, which: str, results: dict[str, Any]) -> None:
        t = self.zs_table
        for name, r in results.items():
            row = t.rowCount()
            t.insertRow(row)
            for c, text in enumerate((which, name, f"{r.acc:.4f}", f"{r.acc_norm:.4f}", str(r.n))):
                t.setItem(row, c, QTableWidgetItem(text))
        self.status.set("ok", f"Zero-shot evaluation of the {which} model done.")

    # ---- export ------------------------------------------------------------------------------
    def suggested_folder(self) -> str:
        run = self.state.run
        if run is None:
            return ""
        model = re.sub(r"[^A-Za-z0-9_.-]+", "-", (run.loaded.name if run.loaded else "model")).strip("-")
        r = run.result
        name = f"{model}-{r.method}-{r.structure.replace(':', 'of')}-{round(r.sparsity_target * 100)}"
        if self._partial_note():
            name += "-partial"
        base = Path(self.settings.get("export_parent", str(Path.home() / "prunestudio-exports")))
        return str(base / name)

    def export(self) -> None:
        if not self.state.exportable() or self.state.run is None:
            self.status.set("warn", "There is no completely pruned model to export: finish a run first "
                                    "(a cancelled or failed run is never exported).")
            return
        out = self.out_dir.text() or self.suggested_folder()
        self.out_dir.setText(out)
        self.settings.set("export_parent", str(Path(out).parent))
        self.export_bar.setValue(0)
        self._start(tasks.export, self.state.run, out, self.overwrite.isChecked(), name="export",
                    busy_text=f"Exporting to {out}…", on_done=self._exported)

    def _exported(self, done: tasks.Exported) -> None:
        self.state.set_exported(done.path, done.report)
        self.export_bar.setValue(self.export_bar.maximum())
        if (done.report.get("coverage") or {}).get("partial"):
            self.status.set("warn", f"Exported to {done.path}, marked as partly pruned in its model card and report.")
        else:
            self.status.set("ok", f"Exported to {done.path}.")

    def open_export(self) -> None:
        if self.state.export_path is not None:
            open_folder(self.state.export_path)

    # ---- common ------------------------------------------------------------------------------
    def _start(self, fn: Callable[..., Any], *args: Any, name: str, busy_text: str,
               on_done: Callable[[Any], None]) -> None:
        """Every job of this panel reports progress in its status line and refreshes the buttons."""
        self.job.start(fn, *args, name=name, busy_text=busy_text, on_event=self._event, on_done=on_done,
                       on_finished=self._refresh)
        self._refresh()

    def _event(self, ev: Any) -> None:
        if isinstance(ev, PhaseProgress):
            if ev.phase == "export":
                self.export_bar.setValue(ev.done)
                self.status.set("busy", f"Exporting: {ev.detail}")
            else:
                self.status.set("busy", f"{ev.phase}: {ev.done} / {ev.total}")
        elif isinstance(ev, PhaseStarted) and ev.phase.startswith("evaluate:"):
            self.status.set("busy", f"Zero-shot: {ev.phase.split(':', 1)[1]}…")
        elif isinstance(ev, PhaseDone):
            pass

    def cancel(self) -> None:
        self.job.cancel()

    def _partial_note(self) -> str:
        """The last run's partial-pruning note ("" when it pruned every block weight it should)."""
        run = self.state.run
        report = run.report if run is not None else {}
        if not (report.get("coverage") or {}).get("partial"):
            return ""
        return next((n for n in report.get("notes", []) if n.startswith("Partial")), "Partial pruning.")

    def _refresh(self, *_a: Any) -> None:
        st = self.state
        note = self._partial_note() if st.model_status == ModelStatus.PRUNED else ""
        self.partial_note.setText(f"⚠ {note} The export's model card and report say so." if note else "")
        self.partial_note.setVisible(bool(note))
        busy = st.busy
        es = self.eval_settings()
        self.dense_button.setEnabled(not busy and es is not None and st.model_status == ModelStatus.DENSE)
        self.pruned_button.setEnabled(not busy and es is not None and st.exportable())
        self.zs_button.setEnabled(not busy and st.loaded is not None
                                  and st.model_status in (ModelStatus.DENSE, ModelStatus.PRUNED))
        self.export_button.setEnabled(not busy and st.exportable())
        self.open_button.setEnabled(st.export_path is not None)
        self.cancel_button.setEnabled(self.job.running)
        if not self.out_dir.text() and st.run is not None:
            self.out_dir.edit.setPlaceholderText(self.suggested_folder())
        self._fill_ppl_table()
