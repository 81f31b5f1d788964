"""Step 4: start / cancel a run and watch it: progress, heatmap, masks, OWL allocation, resources, log."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ...core.events import (
    AllocationComputed,
    BlockDone,
    BlockStarted,
    Message,
    ModulePruned,
    PhaseDone,
    PhaseProgress,
    PhaseStarted,
    RunFinished,
    RunStarted,
)
from ...core.config import Recipe
from ...core.run.export import measured_on
from ...core.run.partial import run_coverage
from ...core.run.report import public_source
from ...core.run.run import RunOutcome
from .. import dialogs, estimates, tasks
from ..jobs import BUSY_TEXT, PanelJob
from ..settings import Settings
from ..state import AppState, ModelStatus, RunStatus
from ..views.experts import ExpertsView, has_experts
from ..views.heatmap import HeatmapView
from ..views.log import LogView
from ..views.mask import MaskView
from ..views.owl import OwlView
from ..views.resource_monitor import ResourceMonitor
from ..widgets import ElidedLabel, StatusLine, fmt_float, fmt_seconds


class RunPanel(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.settings = Settings("run")
        self.previews: dict[tuple[int, str], dict[str, Any]] = {}
        self.module_names: list[str] = []
        self.block_modules: list[list[str]] | None = None
        self.num_blocks = 0
        self.blocks_done = 0
        self.t_start: float | None = None
        self.t_prune: float | None = None
        self.pinned = False

        # ---- controls ----------------------------------------------------------------------
        self.start_button = QPushButton("&Start run")
        self.start_button.setToolTip("Prune the loaded model with the settings of steps 2 and 3 (Ctrl+R).")
        self.cancel_button = QPushButton("&Cancel")
        self.cancel_button.setToolTip("Stop after the current module (Esc). The model is reloaded before the next run.")
        self.cancel_button.setEnabled(False)
        self.eval_dense = QCheckBox("Evaluate the &dense model first")
        self.eval_dense.setToolTip("Measure the perplexity before pruning (once per model and evaluation "
                                   "settings; the number is cached). Uses the evaluation text of step 5.")
        self.eval_pruned = QCheckBox("Evaluate the &pruned model after")
        self.eval_pruned.setToolTip("Measure the perplexity right after pruning, on the same evaluation text.")
        self.eval_dense.setChecked(self.settings.get("eval_dense", True))
        self.eval_pruned.setChecked(self.settings.get("eval_pruned", True))
        self.eval_note = QLabel()  # why the boxes cannot act, when they cannot
        self.eval_note.setObjectName("hint")
        self.eval_note.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.estimate = QLabel()  # "Run (pruning and both evaluations): about 4 min on this machine."
        self.estimate.setObjectName("hint")
        self.estimate.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.estimate.setAccessibleName("Time estimate")
        top = QHBoxLayout()
        for w in (self.start_button, self.cancel_button, self.estimate, self.eval_dense, self.eval_pruned,
                  self.eval_note):
            top.addWidget(w)
        top.addStretch(1)
        self.summary = ElidedLabel()
        self.status = StatusLine()
        self.job = PanelJob(state, self.status)

        prog = QGroupBox("Progress")
        grid = QGridLayout(prog)
        self.where = ElidedLabel("–")
        self.block_bar = QProgressBar()
        self.block_bar.setFormat("this block: %v / %m modules")
        self.overall_bar = QProgressBar()
        self.overall_bar.setFormat("all blocks: %v / %m")
        self.times = QLabel("–")
        self.resources = ResourceMonitor()
        grid.addWidget(QLabel("Now:"), 0, 0)
        grid.addWidget(self.where, 0, 1, 1, 3)
        grid.addWidget(QLabel("Blocks:"), 1, 0)
        grid.addWidget(self.block_bar, 1, 1)
        grid.addWidget(self.overall_bar, 1, 2, 1, 2)
        grid.addWidget(QLabel("Time:"), 2, 0)
        grid.addWidget(self.times, 2, 1)
        grid.addWidget(self.resources, 2, 2, 1, 2)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(2, 1)
        grid.setColumnStretch(3, 1)

        # ---- views -------------------------------------------------------------------------
        self.heatmap = HeatmapView()
        self.mask = MaskView()
        self.owl = OwlView()
        self.tabs = QTabWidget()
        self.tabs.addTab(self.mask, "Module &mask")
        self.tabs.addTab(self.owl.widget, "OWL &allocation")
        self.experts = ExpertsView()  # a block's experts, from a click on an experts column
        self.tabs.addTab(self.experts, "E&xperts")
        self.tabs.setTabEnabled(self.tabs.indexOf(self.experts), False)  # until a run of a model with experts
        self.log = LogView()
        views = QSplitter(Qt.Orientation.Horizontal)
        views.addWidget(self.heatmap)
        views.addWidget(self.tabs)
        views.setStretchFactor(0, 3)
        views.setStretchFactor(1, 2)
        vsplit = QSplitter(Qt.Orientation.Vertical)
        vsplit.addWidget(views)
        vsplit.addWidget(self.log)
        vsplit.setStretchFactor(0, 4)
        vsplit.setStretchFactor(1, 1)

        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.summary)
        lay.addWidget(self.status)
        lay.addWidget(prog)
        lay.addWidget(vsplit, 1)

        self.clock = QTimer(self)
        self.clock.setInterval(500)
        self.clock.timeout.connect(self._tick)

        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.heatmap.cellClicked.connect(self._cell_clicked)
        self.eval_dense.toggled.connect(lambda v: self.settings.set("eval_dense", v))
        self.eval_pruned.toggled.connect(lambda v: self.settings.set("eval_pruned", v))
        self.eval_dense.toggled.connect(self._update_estimate)
        self.eval_pruned.toggled.connect(self._update_estimate)
        self.eta = estimates.EtaTracker()  # the perplexity phases' ETAs
        state.logged.connect(self.log.append_line)
        for sig in (state.model_changed, state.calib_changed, state.config_changed, state.busy_changed):
            sig.connect(self._refresh)
        self._refresh()

    # ---- readiness ---------------------------------------------------------------------------
    def problems(self) -> list[str]:
        st = self.state
        out = []
        if st.loaded is None and st.model_status not in (ModelStatus.PRUNED, ModelStatus.INCOMPLETE,
                                                          ModelStatus.LOADING):
            out.append("load a model (step 1)")
        if st.prune_config is None:
            out.append(f"fix the pruning settings (step 3: {st.prune_error})")
        elif not st.calib_ready():
            out.append("build a calibration set (step 2)")
        return out

    def _refresh(self, *_a: Any) -> None:
        st = self.state
        cfg = st.prune_config
        parts = []
        if st.loaded is not None:
            note = {ModelStatus.PRUNED: " (pruned by the last run; the dense model is reloaded for the next one)",
                    ModelStatus.INCOMPLETE: " (partly pruned; the dense model is reloaded for the next run)"}
            parts.append(f"Model: {st.loaded.name}" + note.get(st.model_status, ""))
        if cfg is not None:
            parts.append(f"method {cfg.label()}, {cfg.structure}, target {cfg.sparsity:.0%}")
        if st.calib is not None and cfg is not None and cfg.needs_calibration:
            parts.append(f"calibration {st.calib.source}: {len(st.calib)} × {st.calib.seqlen} tokens")
        es = st.eval_settings
        if es is not None:
            cached = st.cached_dense()
            parts.append(f"evaluation on {es.source}" + (f" (dense {cached:.2f}, cached)" if cached else ""))
        self.summary.setText(" · ".join(parts) if parts else "")
        self._refresh_eval_boxes()
        self._update_estimate()
        probs = self.problems()
        running = self.job.running
        self.start_button.setEnabled(not probs and not st.busy)
        self.cancel_button.setEnabled(running)
        if not running and probs and self.status.kind in ("", "todo"):
            self.status.set("todo", "Before a run: " + "; ".join(probs) + ".")
        elif not running and not probs and self.status.kind == "todo":
            self.status.set("", "")

    def _update_estimate(self, *_a: Any) -> None:
        """The run's time on this machine with the settings of steps 2, 3 and 5, before it starts."""
        st = self.state
        cfg = st.prune_config
        if st.calib is not None and len(st.calib):
            n, L = len(st.calib), st.calib.seqlen
        else:
            n, L = st.calib_config.nsamples, st.calib_config.seqlen
        es = st.eval_settings
        evaluations, tokens = 0, None
        if es is not None:
            from ...core.run.estimate import eval_tokens

            tokens = eval_tokens(es.source, es.seqlen, es.max_windows)
            evaluations = int(self.eval_pruned.isChecked()) + int(
                self.eval_dense.isChecked() and st.cached_dense(es) is None)
        self.estimate.setText(estimates.run_text(st.loaded, cfg, n, L, tokens, es.seqlen if es else 0, evaluations))

    def _refresh_eval_boxes(self) -> None:
        """The two boxes can act when there is an evaluation text and no run is going on; when they
        cannot, their tooltips and the note beside them say why."""
        st = self.state
        es = st.eval_settings
        running = self.job.running
        for box in (self.eval_dense, self.eval_pruned):
            box.setEnabled(es is not None and not running)
        if es is None:
            why = "No evaluation text yet: choose one in step 5 (Evaluate) to measure perplexity in the run."
            self.eval_dense.setToolTip(why)
            self.eval_pruned.setToolTip(why)
            self.eval_note.setText("No perplexity in the run: no evaluation text (step 5).")
            return
        if running:
            why = "A run is going on; these settings apply to the next run."
            self.eval_dense.setToolTip(why)
            self.eval_pruned.setToolTip(why)
            self.eval_note.setText("")
            return
        cached = st.cached_dense(es)
        where = public_source(es.source)
        if cached is not None:
            self.eval_dense.setToolTip(f"The dense perplexity on {where} with these settings is known "
                                       f"({cached:.3f}); the run reports it without measuring it again.")
        else:
            self.eval_dense.setToolTip(f"Measure the perplexity on {where} before pruning (the number is cached "
                                       "per weights and settings). Unticked, step 5 can still measure it after "
                                       "the run, from the cache or a second copy of the original model.")
        self.eval_pruned.setToolTip(f"Measure the perplexity on {where} right after pruning.")
        self.eval_note.setText("")

    # ---- run ---------------------------------------------------------------------------------
    def start(self) -> bool:
        st = self.state
        probs = self.problems()
        if probs:
            self.status.set("todo", "Before a run: " + "; ".join(probs) + ".")
            return False
        if st.busy:  # before the memory question
            self.status.set("warn", BUSY_TEXT)
            return False
        kind, sentence = st.memory_verdict()
        if kind == "warn" and not dialogs.confirm(self, "Not enough memory?", sentence,
                                                  "Start the run anyway?", "Start anyway", "Cancel"):
            return False
        recipe = self._partial_recipe(st.recipe(model_in_memory=True))
        if recipe is None:
            return False
        es = st.eval_settings
        if es is None and (self.eval_dense.isChecked() or self.eval_pruned.isChecked()):
            st.log("No perplexity is measured in this run: there is no evaluation text (step 5). Step 5 can "
                   "measure both models after the run.", "warning")
        req = tasks.RunRequest(
            recipe=recipe, loaded=st.dense_model(), calib=st.calib, eval=es,
            eval_dense=bool(es) and self.eval_dense.isChecked(),
            eval_pruned=bool(es) and self.eval_pruned.isChecked(),
            cached_dense=st.cached_dense(es) if es else None,
        )
        self._reset_views()
        if self.job.start(tasks.run, req, name="pruning run", busy_text="Running…", on_event=self._event,
                          on_done=self._done, on_error=self._failed, on_cancel=self._cancelled,
                          on_finished=self._finished) is None:
            return False
        st.begin_run()
        self.t_start = time.perf_counter()
        self.clock.start()
        self.resources.start()
        return True

    def _partial_recipe(self, recipe: Recipe) -> Recipe | None:
        """``recipe``, with ``allow_partial`` once the user agrees, when the model in memory has
        block weights no method here can prune (the fused experts of an MoE); None: the user said no."""
        loaded = self.state.loaded
        if loaded is None or recipe.prune.allow_partial:
            return recipe
        cov = run_coverage(loaded.model, recipe.prune)
        if not cov.partial:
            return recipe
        if not dialogs.confirm(self, "Partial pruning", cov.refusal(),
                               f"Prune the rest ({cov.pruned_share:.0%} of the block weights) and mark the "
                               "result as partial everywhere it is shown?", "Prune the rest", "Cancel"):
            self.status.set("todo", "Not started: " + cov.refusal())
            return None
        return replace(recipe, prune=replace(recipe.prune, allow_partial=True))

    def cancel(self) -> None:
        if self.job.running:
            self.job.cancel()
            self.status.set("busy", "Cancelling after the current module…")

    def _reset_views(self) -> None:
        self.previews.clear()
        self.pinned = False
        self.mask.clear()
        self.owl.clear()
        self.experts.clear()
        self.blocks_done = 0
        self.t_prune = None
        self.where.setText("–")
        self.block_bar.setValue(0)
        self.overall_bar.setValue(0)
        self.tabs.setTabEnabled(1, bool(self.state.prune_config and self.state.prune_config.owl))

    def _modules_of(self, block: int) -> list[str]:
        """The modules block ``block`` has (blocks of a hybrid model differ)."""
        if self.block_modules and 0 <= block < len(self.block_modules):
            return self.block_modules[block]
        return self.module_names

    def _event(self, ev: Any) -> None:
        if isinstance(ev, RunStarted):
            self.num_blocks = ev.num_blocks
            self.block_modules = [list(n) for n in ev.block_module_names] or None
            self.heatmap.reset(ev.num_blocks, ev.module_names, self.block_modules, errors_expected=ev.nsamples > 0)
            self.module_names = list(self.heatmap.names)  # the heatmap's column order
            self.tabs.setTabEnabled(self.tabs.indexOf(self.experts), has_experts(self.module_names))
            self.block_bar.setRange(0, len(self._modules_of(0)))
            self.block_bar.setValue(0)
            self.overall_bar.setRange(0, ev.num_blocks)
            self.overall_bar.setValue(0)
            kinds = len({tuple(m) for m in self.block_modules}) if self.block_modules else 1
            self.where.setText(f"{ev.method} on {ev.num_blocks} blocks × {len(ev.module_names)} modules"
                               + (f" ({kinds} kinds of block)" if kinds > 1 else "") + ", "
                               f"{ev.nsamples} samples × {ev.seqlen} tokens, device {ev.device}")
        elif isinstance(ev, AllocationComputed):
            cfg = self.state.prune_config
            self.owl.set_allocation(ev.block_sparsity, cfg.sparsity if cfg else 0.5)
            self.tabs.setTabEnabled(1, True)
        elif isinstance(ev, BlockStarted):
            if self.t_prune is None:
                self.t_prune = time.perf_counter()
            self.block_bar.setRange(0, len(self._modules_of(ev.index)))
            self.block_bar.setValue(0)
            self.where.setText(f"Block {ev.index + 1} of {ev.num_blocks} (target {ev.target_sparsity:.1%})")
        elif isinstance(ev, ModulePruned):
            self.heatmap.set_value(ev.block, ev.name, ev.sparsity, ev.info.get("output_error"))
            self.experts.record(ev.block, ev.name, ev.info)
            self.previews[(ev.block, ev.name)] = {
                "sparsity": ev.sparsity, "shape": ev.shape,
                "mask_image": ev.info.get("mask_image"), "row_sparsity": ev.info.get("row_sparsity"),
                "output_error": ev.info.get("output_error"), "row_error": ev.info.get("row_error"),
                "expert": ev.info.get("preview_expert"),  # experts columns: whose mask the preview is
            }
            self.block_bar.setValue(self.block_bar.value() + 1)
            self.where.setText(f"Block {ev.block + 1} of {self.num_blocks}: {ev.name} ({ev.sparsity:.1%} zeros)")
            if not self.pinned:
                self._show_preview(ev.block, ev.name)
        elif isinstance(ev, BlockDone):
            self.blocks_done = ev.index + 1
            self.overall_bar.setValue(self.blocks_done)
        elif isinstance(ev, PhaseStarted):
            self.eta.text(ev)
            if ev.phase.startswith("ppl"):
                self.where.setText("Evaluating the " + ("dense" if "dense" in ev.phase else "pruned") + " model…")
            elif ev.phase in ("capture", "owl", "load"):
                self.where.setText({"capture": "Capturing the first block's inputs…", "owl": "OWL: measuring outliers…",
                                    "load": "Reloading the dense model…"}[ev.phase])
        elif isinstance(ev, PhaseProgress):
            if ev.phase.startswith("ppl"):
                what = "dense" if "dense" in ev.phase else "pruned"
                self.where.setText(f"Evaluating the {what} model: {ev.done} / {ev.total} windows, {self.eta.text(ev)}")
        elif isinstance(ev, RunFinished):
            self.where.setText(f"Pruned: {ev.global_sparsity:.2%} zeros in {fmt_seconds(ev.seconds)}")
        elif isinstance(ev, (PhaseDone, Message)):
            pass
        self._tick()

    def _tick(self) -> None:
        if self.t_start is None:
            return
        elapsed = time.perf_counter() - self.t_start
        text = f"elapsed {fmt_seconds(elapsed)}"
        if self.job.running and self.t_prune is not None and 0 < self.blocks_done < self.num_blocks:
            per = (time.perf_counter() - self.t_prune) / self.blocks_done
            text += f", about {fmt_seconds(per * (self.num_blocks - self.blocks_done))} left for pruning"
        self.times.setText(text)

    def _done(self, outcome: RunOutcome) -> None:
        self.state.finish_run(outcome)
        self.where.setText(f"Finished: {outcome.result.global_sparsity:.2%} zeros over the pruned modules")
        r = outcome.result
        cov = outcome.report.get("coverage") or {}
        partial = bool(cov.get("partial"))
        msg = f"Done: {r.global_sparsity:.2%} zeros overall ({r.method}, {r.structure})."
        if partial:
            msg = (f"Done, PARTIAL: {r.global_sparsity:.2%} zeros in the pruned modules, which hold only "
                   f"{cov['pruned_share']:.0%} of the block weights; the rest stayed dense ({r.method}, {r.structure}).")
            self.where.setText(f"Finished (partial): {r.global_sparsity:.2%} zeros over the pruned modules, "
                               f"{cov['pruned_share']:.0%} of the block weights")
        if outcome.ppl_dense is not None or outcome.ppl_pruned is not None:
            msg += (f" Perplexity dense {fmt_float(outcome.ppl_dense, 2)}, pruned {fmt_float(outcome.ppl_pruned, 2)}"
                    f" ({measured_on(outcome.report.get('eval') or {})}).")
        for note in outcome.report.get("notes", r.notes):
            self.state.log(note, "warning")
        self.status.set("warn" if partial else "ok", msg + " Evaluate further or export in step 5.")

    def _cancelled(self) -> None:
        self.state.set_run_status(RunStatus.CANCELLED)
        self.status.set("warn", "Cancelled. The model in memory is partly pruned: it is reloaded "
                                "automatically before the next job and cannot be exported.")

    def _failed(self, info: Any) -> None:
        self.state.set_run_status(RunStatus.FAILED)
        self.status.set("error", f"The run failed: {info.exception}. The model is reloaded before the next run.")

    def _finished(self) -> None:
        self.clock.stop()
        self.resources.stop()
        self._tick()
        self.t_start = None
        self._refresh()

    # ---- cells ---------------------------------------------------------------------------------
    def _cell_clicked(self, block: int, module: int) -> None:
        if not (0 <= module < len(self.module_names)):
            return
        self.pinned = True
        self._show_preview(block, self.module_names[module], switch=True)

    def _show_preview(self, block: int, name: str, switch: bool = False) -> None:
        """The mask of module ``name``; for an experts column also that block's experts (the
        Experts tab, brought forward on a click; the mask is then one expert's)."""
        experts = self.experts.show_module(block, name)
        p = self.previews.get((block, name))
        if p is None:
            self.mask.clear()
            self.mask.title.setText(f"Block {block}, {name}: not pruned yet.")
            if switch and experts:
                self.tabs.setCurrentWidget(self.experts)
            return
        j = self.module_names.index(name) if name in self.module_names else -1
        if j >= 0:
            self.heatmap.select(block, j)
        shown, sparsity = self.experts.preview_of(block, name, p.get("expert"), p["sparsity"])
        error = p.get("output_error") if shown == name else self.experts.error_of(block, name, p.get("expert"))
        self.mask.show_module(block, shown, sparsity, p["shape"], p["mask_image"], p["row_sparsity"],
                              p.get("row_error"), error)  # an expert's preview: that expert's own error
        if switch:
            self.tabs.setCurrentWidget(self.experts if experts else self.mask)
