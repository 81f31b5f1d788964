"""Statistics of a calibration set's kept samples, and the button that scores their similarity.

Counts are shown at once; perplexity and n-gram statistics (:meth:`CalibrationSet.stats`) are
computed on a worker of their own, off the GUI thread and outside the one-job-at-a-time rule (they
read the set, not the model). A set that changes while they are computed is computed again.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QFormLayout, QGroupBox, QLabel, QPushButton, QWidget

from ...core.calib.calibset import CalibrationSet
from ..widgets import fmt_float
from ..worker import Worker

ROWS = (
    ("samples", "Samples kept", "Samples the pruner will use."),
    ("dropped", "Dropped", "Filtered by perplexity or dropped by hand."),
    ("tokens", "Tokens", "Tokens over the kept samples."),
    ("ppl", "Perplexity", "Mean ± standard deviation of the samples' perplexity under the model."),
    ("distinct", "Distinct 2-/4-grams", "Share of distinct token n-grams: low values mean repetitive text."),
    ("minkpp", "Min-K%++", "How much the samples look like the model's training data (higher: more alike)."),
    ("score_ppl", "Scored perplexity", "Mean perplexity measured by the similarity scoring."),
)


class CalibStats(QGroupBox):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Statistics of the kept samples", parent)
        form = QFormLayout(self)
        self.labels: dict[str, QLabel] = {}
        for key, title, tip in ROWS:
            lab = QLabel("–")
            lab.setToolTip(tip)
            self.labels[key] = lab
            tl = QLabel(title + ":")
            tl.setToolTip(tip)
            form.addRow(tl, lab)
        self.score_button = QPushButton("Score si&milarity")
        self.score_button.setToolTip("Measure Min-K%++ and perplexity of the kept samples under the model "
                                     "(calibration data close to the training data prunes better).")
        form.addRow(self.score_button)
        self._shown: CalibrationSet | None = None
        self._worker: Worker | None = None
        self._dirty = False

    def show_set(self, cs: CalibrationSet | None) -> None:
        """Counts of ``cs`` now, its perplexity and n-gram statistics when they are computed."""
        self._shown = cs
        L = self.labels
        if cs is None:
            for k in ("samples", "dropped", "tokens", "ppl", "distinct"):
                L[k].setText("–")
            return
        kept = cs.kept()
        L["samples"].setText(f"{len(kept)} × {cs.seqlen} tokens")
        L["dropped"].setText(str(len(cs.samples) - len(kept)))
        L["tokens"].setText(f"{sum(s.num_tokens for s in kept):,}")
        self._request_stats()

    def show_similarity(self, r: dict[str, Any]) -> None:
        """The result of :func:`score_calibration`."""
        self.labels["minkpp"].setText(f"{fmt_float(r.get('minkpp_mean'))} ± {fmt_float(r.get('minkpp_std'))}"
                                      f"  (k = {r.get('k', 0.2):.0%}, n = {r.get('n')})")
        self.labels["score_ppl"].setText(f"{fmt_float(r.get('ppl_mean'), 2)} ± {fmt_float(r.get('ppl_std'), 2)}")

    def clear_similarity(self) -> None:
        self.labels["minkpp"].setText("–")
        self.labels["score_ppl"].setText("–")

    def _request_stats(self) -> None:
        if self._worker is not None:
            self._dirty = True
            return
        cs = self._shown
        if cs is None:
            return
        w = Worker(cs.stats, name="calibration statistics")
        w.returned.connect(lambda st, cs=cs: self._show_stats(cs, st))
        w.finished.connect(self._stats_finished)
        self._worker = w
        w.start()

    def _stats_finished(self) -> None:
        self._worker = None
        if self._dirty:
            self._dirty = False
            self._request_stats()

    def _show_stats(self, cs: CalibrationSet, st: dict[str, Any]) -> None:
        if cs is not self._shown:
            return
        self.labels["ppl"].setText(f"{fmt_float(st['ppl_mean'], 2)} ± {fmt_float(st['ppl_std'], 2)}")
        self.labels["distinct"].setText(f"{fmt_float(st['distinct_2'])} / {fmt_float(st['distinct_4'])}")
