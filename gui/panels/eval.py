"""Step 5: perplexity of the dense and the pruned model, optional zero-shot tasks, and export
(the export group in :mod:`.eval_export`, the "try it" pane in :mod:`.eval_try`)."""

from __future__ import annotations

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
from .. import dialogs, estimates, tasks
from ..jobs import PanelJob
from ..settings import Settings
from ..state import AppState, ModelStatus
from ..widgets import PathEdit, StatusLine, fmt_float, hint_label, spin
from . import eval_export, eval_try

WIKITEXT2_TEST = "hf:Salesforce/wikitext:wikitext-2-raw-v1:test"
DENSE_NOTE = ("Evaluate dense works before and after pruning. After a run it keeps the pruned model: the "
              "number comes at once from the cache of dense results when these weights were measured on "
              "this text, window length and windows before (by a run with 'Evaluate the dense model "
              "first', or here); otherwise a second copy of the original model is loaded in the "
              "background, which needs its memory again until it is measured.")
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
        self.ppl_estimate = hint_label()  # "Each evaluation: about 11 min on this machine."
        self.ppl_estimate.setAccessibleName("Perplexity time estimate")
        pform.addRow(self.ppl_estimate)
        self.ppl_table = _table(["Evaluation text", "Window", "Windows read", "Dense", "Pruned", "Change"])
        self.ppl_table.horizontalHeaderItem(1).setToolTip("Tokens per evaluation window.")
        self.ppl_table.horizontalHeaderItem(2).setToolTip(
            "How many windows the perplexity was measured on (the text may hold fewer than the limit).")
        pform.addRow(self.ppl_table)
        self.ppl_note = hint_label(DENSE_NOTE)
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
        self.full_tasks = QCheckBox("Whole task sets (never a subset file)")
        self.full_tasks.setToolTip("Read the whole task even when the task folder also holds a subset "
                                   "(HellaSwag: all 10,042 questions, not the 1,000-question subset), as the papers do.")
        zform.addRow("", self.full_tasks)
        zl.addLayout(zform)
        self.zs_button = QPushButton("Run &zero-shot")
        self.zs_button.setToolTip("Evaluate the model in memory (dense or pruned) on the ticked tasks.")
        self.zs_estimate = hint_label()  # "2 tasks: about 3 min on this machine."
        self.zs_estimate.setWordWrap(False)
        self.zs_estimate.setAccessibleName("Zero-shot time estimate")
        zb = QHBoxLayout()
        zb.addWidget(self.zs_button)
        zb.addWidget(self.zs_estimate)
        zb.addStretch(1)
        zl.addLayout(zb)
        self.zs_table = _table(["Model", "Task", "acc", "acc_norm", "Questions"])
        zl.addWidget(self.zs_table)

        self.status = StatusLine()
        self.job = PanelJob(state, self.status)
        self.exporter = eval_export.ExportBox(self)
        (self.out_dir, self.overwrite, self.export_button, self.open_button, self.ollama_button,
         self.partial_note) = (self.exporter.out_dir, self.exporter.overwrite, self.exporter.export_button,
                               self.exporter.open_button, self.exporter.ollama_button, self.exporter.partial_note)
        left = QVBoxLayout()
        left.addWidget(ppl)
        left.addWidget(self.exporter.box)
        left.addStretch(1)
        right = QVBoxLayout()
        right.addWidget(zs)
        self.try_it = eval_try.TryIt(self)  # the "try it" pane: dense and pruned text side by side
        right.addWidget(self.try_it.box, 1)
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
        for cb in self.task_boxes.values():
            cb.toggled.connect(self._update_estimates)
        self.limit.valueChanged.connect(self._update_estimates)
        self.eta = estimates.EtaTracker()  # the running evaluation's elapsed time and ETA
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
        self._update_estimates()

    def _update_estimates(self, *_a: Any) -> None:
        """What one perplexity evaluation and the ticked zero-shot tasks take on this machine."""
        es = self.eval_settings()
        loaded = self.state.loaded
        self.ppl_estimate.setText(estimates.ppl_text(loaded, es.source, es.seqlen, es.max_windows) if es else "")
        self.zs_estimate.setText(estimates.zeroshot_text(loaded, self.chosen_tasks(), self.limit.value() or None))

    def _restore(self) -> None:
        s = self.settings
        self.source.setText(s.get("source", ""))
        self.seqlen.setValue(s.get("seqlen", 512))
        self.windows.setValue(s.get("windows", 32))
        self.task_dir.setText(s.get("task_dir", ""))
        self.limit.setValue(s.get("limit", 100))
        self.full_tasks.setChecked(bool(s.get("full_tasks", False)))

    def apply_preset(self, preset: Any) -> None:
        """A settings preset's zero-shot sizes (``core/config.py`` ``SettingsPreset``) and its
        window length (the calibration's for the CPU-sized defaults); the papers read every
        window of the text."""
        self.seqlen.setValue(preset.eval_seqlen or preset.seqlen)
        if preset.name == "paper":
            self.windows.setValue(0)
        self.limit.setValue(preset.zeroshot_limit or 0)
        self.full_tasks.setChecked(preset.zeroshot_full)

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
        st = self.state
        blocker = st.dense_eval_blocker()
        if blocker:
            self.status.set("warn", blocker)
            return
        cached = st.cached_dense(es)
        if cached is not None:
            self._fill_ppl_table()
            self.status.set("ok", f"Dense perplexity {cached:.3f} on {self.measured_on(es)} (measured before).")
            return
        if st.model_status == ModelStatus.PRUNED and st.exportable():
            # keep the pruned model (it can still be evaluated and exported): the dense cache, or a
            # second copy of the original weights for the length of the evaluation
            if not self._second_copy_fits():
                return
            self.start_job(tasks.evaluate_dense_baseline, st.loaded, st.model_args, es, st.dense_signature,
                        name="evaluating the dense model",
                        busy_text="Evaluating the dense model (a second copy of the original weights)…",
                        on_done=self._dense_done)
            return
        # the dense model in memory, or a partly pruned one that is replaced by a reload first
        self.start_job(tasks.evaluate_dense, st.dense_model(), st.model_args, es,
                    name="evaluating the dense model", busy_text="Evaluating the dense model…", on_done=self._dense_done)

    def _second_copy_fits(self) -> bool:
        """Whether to load a second copy of the original weights: yes when it fits in the memory
        available, or when the user says so."""
        from ...core.model.memory import available_memory, format_bytes
        from ...core.run.evaluation import weights_bytes

        loaded = self.state.loaded
        if loaded is None:
            return False
        need = weights_bytes(loaded)
        avail = available_memory(str(loaded.device))
        free = avail.get("device_free") if loaded.device.type == "cuda" else avail.get("host_available")
        if free is None or need <= free:
            return True
        return dialogs.confirm(
            self, "Not enough memory?",
            f"Unless these weights were measured before, the dense perplexity needs a second copy of the original "
            f"model: about {format_bytes(need)}, and {format_bytes(free)} is available.",
            "Load it anyway? (Otherwise tick 'Evaluate the dense model first' in step 4 before the next run.)",
            "Load anyway", "Cancel")

    def evaluate_pruned(self) -> None:
        es = self.eval_settings()
        if es is None:
            self.status.set("warn", "Choose an evaluation text first.")
            return
        if not self.state.exportable():
            self.status.set("warn", "There is no completely pruned model in memory; run step 4 first.")
            return
        self.start_job(tasks.evaluate_pruned, self.state.loaded, es, self.state.dense_signature,
                    name="evaluating the pruned model", busy_text="Evaluating the pruned model…",
                    on_done=lambda ppl: self._pruned_done(es, ppl))

    def measured_on(self, es: EvalSettings) -> str:
        """"wiki.test.raw, 32 windows of 512 tokens": what a perplexity with ``es`` was measured on."""
        n = self.state.windows_read(es)
        windows = f"{n} window{'s' if n != 1 else ''}" if n is not None else "windows"
        return f"{_public_name(es.source)}, {windows} of {es.seqlen} tokens"

    def _pruned_done(self, es: EvalSettings, ppl: float) -> None:
        self.state.set_pruned_ppl(es, ppl)
        self.status.set("ok", f"Pruned perplexity {ppl:.3f} on {self.measured_on(es)}" + self._change(es) + ".")

    def _dense_done(self, ppl: float) -> None:
        es = self.eval_settings()
        if es is not None and self.state.run is not None and self.state.pruned_ppl.get(
                es.cache_key(self.state.model_args)) is not None:
            # the report and the history of the latest run get the dense number beside the pruned one
            self.state.set_pruned_ppl(es, self.state.pruned_ppl[es.cache_key(self.state.model_args)])
        self.status.set("ok", f"Dense perplexity {ppl:.3f}"
                        + (f" on {self.measured_on(es)}" + self._change(es) + "." if es else "."))
        self._fill_ppl_table()

    def _change(self, es: EvalSettings) -> str:
        """"; pruned +12.3 % against dense" when both perplexities with ``es`` are known, else ""."""
        d = self.state.cached_dense(es)
        p = self.state.pruned_ppl.get(es.cache_key(self.state.model_args))
        return f"; pruned {(p / d - 1) * 100:+.1f} % against dense" if d and p else ""

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
        self.settings.set("full_tasks", self.full_tasks.isChecked())
        which = "dense" if self.state.model_status == ModelStatus.DENSE else "pruned"
        self.start_job(tasks.zeroshot, self.state.loaded, names, self.task_dir.text() or None,
                    self.limit.value() or None, self.full_tasks.isChecked(), name="zero-shot evaluation",
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
    def open_export(self) -> None:
        if self.state.export_path is not None:
            open_folder(self.state.export_path)

    # ---- common ------------------------------------------------------------------------------
    def start_job(self, fn: Callable[..., Any], *args: Any, name: str, busy_text: str,
               on_done: Callable[[Any], None]) -> None:
        """Every job of this panel reports progress in its status line and refreshes the buttons."""
        self.job.start(fn, *args, name=name, busy_text=busy_text, on_event=self._event, on_done=on_done,
                       on_finished=self._refresh)
        self._refresh()

    def _event(self, ev: Any) -> None:
        eta = self.eta.text(ev)
        if isinstance(ev, PhaseProgress):
            if ev.phase == "export":
                self.exporter.progress(ev.done, ev.detail)
            else:
                self.status.set("busy", f"{ev.phase}: {ev.done} / {ev.total}, {eta}")
        elif isinstance(ev, PhaseStarted) and ev.phase.startswith("evaluate:"):
            self.status.set("busy", f"Zero-shot: {ev.phase.split(':', 1)[1]}…")
        elif isinstance(ev, PhaseDone):
            pass

    def cancel(self) -> None:
        self.job.cancel()

    def _refresh(self, *_a: Any) -> None:
        st = self.state
        busy = st.busy
        es = self.eval_settings()
        blocker = st.dense_eval_blocker()
        self.dense_button.setEnabled(not blocker)
        if blocker:
            self.dense_button.setToolTip(blocker)
        elif st.cached_dense(es) is not None:
            self.dense_button.setToolTip("The dense perplexity with these settings is known; pressing shows it.")
        elif st.model_status == ModelStatus.PRUNED and st.exportable():
            self.dense_button.setToolTip(
                "Perplexity of the model before pruning. The pruned model is kept: the number comes from the "
                "cache of dense results, or a second copy of the original model is loaded for it (its memory "
                "again, until it is measured).")
        elif st.model_status == ModelStatus.INCOMPLETE:
            self.dense_button.setToolTip("Perplexity of the model before pruning; the partly pruned model in "
                                         "memory is replaced by the dense one first.")
        else:
            self.dense_button.setToolTip("Perplexity of the model before pruning (cached per model and settings).")
        self.pruned_button.setEnabled(not busy and es is not None and st.exportable())
        self.pruned_button.setToolTip(
            "Perplexity of the pruned model of the last run." if self.pruned_button.isEnabled()
            else "Wait for the current job to finish." if busy
            else "Choose an evaluation text first." if es is None
            else "There is no completely pruned model in memory: run step 4 first.")
        self.zs_button.setEnabled(not busy and st.loaded is not None
                                  and st.model_status in (ModelStatus.DENSE, ModelStatus.PRUNED))
        self.exporter.refresh()
        self.try_it.refresh()
        self._update_estimates()
        self.cancel_button.setEnabled(self.job.running)
        self._fill_ppl_table()
