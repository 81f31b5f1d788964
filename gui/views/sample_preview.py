"""The calibration samples of step 2: their table above, the text of one sample below.

While a set is being built the table fills as samples are finished, and the text pane follows
the sample being written (:meth:`SamplePreview.show_writing`) until the user picks a finished one;
that choice then stays in view. The user drops samples by hand in the table (:mod:`sample_table`).
"""

from __future__ import annotations

import math

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QPlainTextEdit, QSplitter, QVBoxLayout, QWidget

from ...core.calib.calibset import CalibSample
from ...core.calib.selfgen import FilteringDone, SampleGenerated, SampleInProgress
from .sample_table import SampleTable, SampleTableModel


class SamplePreview(QSplitter):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(Qt.Orientation.Vertical, parent)
        self.model = SampleTableModel(self)
        self.table = SampleTable(self.model)
        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        self.text.setPlaceholderText("Select a sample to read it. Untick it or press Delete to leave it out.")
        self._follow_live = False  # the text pane shows the sample being written
        top = QWidget()
        lay = QVBoxLayout(top)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(QLabel("Samples (greyed: left out, with the reason)"))
        lay.addWidget(self.table)
        self.addWidget(top)
        self.addWidget(self.text)
        self.setStretchFactor(0, 3)
        self.setStretchFactor(1, 1)
        self.table.selected_sample.connect(self._show_sample)

    # ---- while a set is built -----------------------------------------------------------------
    def begin_live(self) -> None:
        """A new set is being built: empty the table; follow the text being written."""
        self.model.clear()
        self.model.editable = False
        self.text.clear()
        self._follow_live = True

    def add(self, ev: SampleGenerated) -> None:
        self.model.append_live(ev.text, ev.num_tokens, ev.perplexity)

    def show_writing(self, ev: SampleInProgress) -> None:
        """The text being written, unless the user picked a finished sample to read."""
        if not self._follow_live:
            return
        bar = self.text.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 2
        self.text.setPlainText(f"Writing sample {ev.index} · {ev.num_tokens} of {ev.total_tokens} tokens"
                               f" (click a finished sample to read it)\n\n{ev.text}")
        if at_end:
            bar.setValue(bar.maximum())

    def mark_filtered(self, ev: FilteringDone) -> None:
        self.model.mark_filtered(ev.dropped, ev.threshold)

    def end_live(self, samples: list[CalibSample] | None) -> None:
        """Building ended: show ``samples`` (the set in use); the sample read stays in view,
        else the first one is shown."""
        self.model.editable = True
        self._follow_live = False
        row = self.table.currentIndex().row()
        if samples is not None and self.model.samples is not samples:
            self.model.set_samples(samples)
        if self.model.rowCount():
            self.table.selectRow(row if 0 <= row < self.model.rowCount() else 0)

    # ---- a finished set -----------------------------------------------------------------------
    def show_samples(self, samples: list[CalibSample] | None) -> None:
        if samples is None:
            self.model.clear()
        elif self.model.samples is not samples:
            self.model.set_samples(samples)

    def set_editable(self, editable: bool) -> None:
        self.model.editable = editable

    def _show_sample(self, row: int) -> None:
        if row >= 0:
            self._follow_live = False  # a sample is picked: live text no longer replaces it
        if not (0 <= row < len(self.model.samples)):
            self.text.clear()
            return
        s = self.model.samples[row]
        ppl = s.perplexity
        head = f"Sample {row} · {self.model.data(self.model.index(row, 2))} tokens"
        if ppl is not None and math.isfinite(ppl):
            head += f" · perplexity {ppl:.2f}"
        if s.dropped:
            head += f" · left out: {s.drop_reason or 'dropped'}"
        self.text.setPlainText(head + "\n\n" + s.text)
