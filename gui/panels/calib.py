"""Step 2: calibration data - its source form, the samples as they are built, stats, similarity.

The panel composes :class:`CalibSourceForm` (what to build), :class:`SamplePreview` (the samples,
live while they are written; hand-dropping) and :class:`CalibStats`, and runs the jobs that build,
open, save and score a set.
"""

from __future__ import annotations

from typing import Any, Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGroupBox, QHBoxLayout, QProgressBar, QPushButton, QSplitter, QVBoxLayout, QWidget

from ...core.calib.calibset import CalibrationSet
from ...core.calib.selfgen import FilteringDone, SampleGenerated, SampleInProgress
from ...core.config import Recipe
from ...core.errors import PruneStudioError
from ...core.events import PhaseDone, PhaseProgress, PhaseStarted
from .. import dialogs, estimates, tasks
from ..jobs import BUSY_TEXT, PanelJob
from ..state import AppState
from ..views.calib_stats import CalibStats
from ..views.sample_preview import SamplePreview
from ..widgets import StatusLine, hint_label
from .calib_source import SET_FILTERS, CalibSourceForm


class CalibPanel(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state

        # ---- source and sizes, and the jobs that build a set ----------------------------------
        src_box = QGroupBox("Calibration data")
        box = QVBoxLayout(src_box)
        self.form = CalibSourceForm()
        box.addWidget(self.form)
        btns = QHBoxLayout()
        self.go = QPushButton("&Generate")
        self.go.setToolTip("Build the calibration set in the background; samples appear as they are ready.")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.open_button = QPushButton("&Open set…")
        self.open_button.setToolTip("Open a calibration set saved earlier (.jsonl).")
        self.save_button = QPushButton("Sa&ve set…")
        self.save_button.setToolTip("Save this set, with the samples you dropped, to reuse it or share it.")
        for b in (self.go, self.cancel_button, self.open_button, self.save_button):
            btns.addWidget(b)
        box.addLayout(btns)
        self.estimate = hint_label()  # "Generating 79 samples: about 8 min on this machine."
        self.estimate.setAccessibleName("Time estimate")
        box.addWidget(self.estimate)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m")
        box.addWidget(self.progress)
        self.status = StatusLine()
        box.addWidget(self.status)
        self.job = PanelJob(state, self.status)  # building or opening a set
        self.score_job = PanelJob(state, self.status)  # scoring its similarity

        self.stats = CalibStats()
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(src_box)
        ll.addWidget(self.stats)
        ll.addStretch(1)

        self.preview = SamplePreview()
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(self.preview)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setSizes([420, 700])
        lay = QVBoxLayout(self)
        lay.addWidget(split)

        # ---- wiring --------------------------------------------------------------------------
        self.form.changed.connect(self._config_changed)
        self.go.clicked.connect(self.generate)
        self.cancel_button.clicked.connect(self.cancel)
        self.open_button.clicked.connect(self.open_set)
        self.save_button.clicked.connect(self.save_set)
        self.stats.score_button.clicked.connect(self.score)
        self.preview.model.edited.connect(self.state.calib_edited)
        state.calib_changed.connect(self._calib_changed)
        state.busy_changed.connect(self._busy)
        state.recipe_applied.connect(self.apply_recipe)
        state.model_changed.connect(self._update_buttons)
        state.model_changed.connect(self._update_estimate)
        self.eta = estimates.EtaTracker()
        self._config_changed()
        self._calib_changed()

    # ---- settings ----------------------------------------------------------------------------
    def apply_recipe(self, recipe: Recipe) -> None:
        self.form.set_config(recipe.calibration)

    def _config_changed(self) -> None:
        self.go.setText(self.form.action_text())
        try:
            cfg = self.form.config()
        except PruneStudioError as e:
            if not self.job.running:
                self.status.set("warn", e.message)
            return
        if not self.job.running and self.status.kind == "warn":
            self.status.set("", "")
        self.state.set_calib_config(cfg)
        self._update_estimate()

    def _update_estimate(self, *_a: Any) -> None:
        """The time a self-generated set takes on this machine, before Generate is pressed."""
        try:
            cfg = self.form.config()
        except PruneStudioError:
            cfg = None
        self.estimate.setText(estimates.selfgen_text(self.state.loaded, cfg))

    # ---- jobs --------------------------------------------------------------------------------
    def generate(self) -> None:
        try:
            cfg = self.form.config()
        except PruneStudioError as e:
            self.status.set("warn", e.message)
            return
        if not self.state.has_model():
            self.status.set("warn", "Load a model first (step 1): it writes or tokenizes the samples.")
            return
        if self.state.busy:
            self.status.set("warn", BUSY_TEXT)
            return
        self.form.remember()
        self.state.set_calib_config(cfg)
        if self.form.kind_key() == "saved":
            if self.state.loaded is None:
                self.status.set("warn", "Wait for the model to finish loading.")
                return
            self._build(cfg.nsamples, tasks.open_set, self.state.loaded, cfg.source,
                        name="opening the calibration set")
        else:
            self._build(cfg.nsamples, tasks.calibrate, self.state.dense_model(), self.state.model_args, cfg,
                        name="building the calibration set")

    def open_set(self) -> None:
        path = dialogs.get_open_file(self, "Open a calibration set", SET_FILTERS, "calib-set")
        if not path:
            return
        self.form.open_saved(path)
        self.generate()

    def _build(self, total: int, fn: Callable[..., Any], *args: Any, name: str) -> None:
        """Build (or open) a set with ``fn(*args)``; its samples fill the preview as they come."""
        self.preview.begin_live()
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(0)
        if self.job.start(fn, *args, name=name, busy_text="Working… samples appear below as they are ready.",
                          on_event=self._event, on_done=self._done, on_cancel=self._cancelled,
                          on_finished=self._finished) is None:
            self.preview.set_editable(True)

    def _event(self, ev: Any) -> None:
        if isinstance(ev, SampleGenerated):
            self.preview.add(ev)
            if self.state.calib_config.protocol == "windows":  # paper: progress counts windows filled
                self.progress.setValue(min(self.progress.maximum(), self.preview.model.rowCount()))
        elif isinstance(ev, SampleInProgress):
            self.preview.show_writing(ev)
        elif isinstance(ev, FilteringDone):
            self.preview.mark_filtered(ev)
        elif isinstance(ev, PhaseStarted):
            self.eta.text(ev)
            if ev.total:
                self.progress.setRange(0, ev.total)
                self.progress.setValue(0)
            self.status.set("busy", f"{ev.phase.capitalize()}…")
        elif isinstance(ev, PhaseProgress):
            self.progress.setRange(0, max(ev.total, 1))
            self.progress.setValue(ev.done)
            eta = self.eta.text(ev)
            if ev.detail:
                self.status.set("busy", f"{ev.phase.capitalize()}: {ev.done}/{ev.total} — {ev.detail}; {eta}")
            else:
                self.status.set("busy", f"{ev.phase.capitalize()}: {ev.done}/{ev.total}; {eta}")
        elif isinstance(ev, PhaseDone):
            self.progress.setValue(self.progress.maximum())

    def _done(self, cs: CalibrationSet) -> None:
        self.state.set_calib(cs)
        n, left_out = len(cs), len(cs.samples) - len(cs)
        self.status.set("ok", f"{n} samples of {cs.seqlen} tokens ready"
                        + (f" ({left_out} left out)." if left_out else "."))

    def _cancelled(self) -> None:
        kept = self.state.calib is not None
        self.status.set("warn", "Cancelled; the previous set is kept." if kept else "Cancelled.")

    def _finished(self) -> None:
        cs = self.state.calib
        self.preview.end_live(cs.samples if cs is not None else None)
        self._update_buttons()

    def cancel(self) -> None:
        self.job.cancel()
        self.score_job.cancel()

    def save_set(self) -> None:
        cs = self.state.calib
        if cs is None:
            return
        path = dialogs.get_save_file(self, "Save the calibration set", SET_FILTERS, "calib-set", "calibration.jsonl")
        if not path:
            return
        if not path.endswith(".jsonl"):
            path += ".jsonl"
        try:
            cs.save(path)
        except OSError as e:
            from .. import errors

            errors.report(e, context="saving the calibration set")
            return
        self.status.set("ok", f"Saved to {path}.")

    def score(self) -> None:
        cs = self.state.calib
        if cs is None or len(cs) == 0 or not self.state.has_model() or self.state.busy:
            return
        self.score_job.start(tasks.similarity, self.state.dense_model(), self.state.model_args, cs,
                             name="scoring similarity", busy_text="Scoring the kept samples…", on_done=self._scored,
                             on_finished=self._update_buttons)

    def _scored(self, r: dict[str, Any]) -> None:
        self.stats.show_similarity(r)
        self.status.set("ok", "Similarity scored.")

    # ---- display -----------------------------------------------------------------------------
    def _calib_changed(self) -> None:
        cs = self.state.calib
        if not self.job.running:  # while a set is built, the preview shows the new one
            self.preview.show_samples(cs.samples if cs is not None else None)
            self.stats.clear_similarity()
        self.stats.show_set(cs)
        self._update_buttons()

    def _busy(self, busy: bool) -> None:
        # no hand edits while any job runs: a run must use (and report) one fixed set of samples
        self.preview.set_editable(not busy)
        self._update_buttons()

    def _update_buttons(self) -> None:
        busy = self.state.busy
        mine = self.job.running or self.score_job.running
        has = self.state.calib is not None and len(self.state.calib) > 0
        self.go.setEnabled(not busy)
        self.open_button.setEnabled(not busy)
        self.cancel_button.setEnabled(mine)
        self.save_button.setEnabled(self.state.calib is not None and not mine)
        self.stats.score_button.setEnabled(has and not busy and self.state.has_model())
