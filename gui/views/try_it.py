"""The Evaluate step's "try it" pane: one prompt continued by the dense and the pruned model with the
same settings and seed, the two texts side by side.

The pane shows what it is given and asks for work by signals (:attr:`TryItPane.generate_requested`
with the prompt and :class:`~prunestudio.core.evaluate.samples.SampleSettings`,
:attr:`TryItPane.cancel_requested`); the panel runs the job and feeds the events back
(:meth:`TryItPane.show_event`). It keeps the latest comparisons (:meth:`TryItPane.card_samples`)
for the exported model card.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ...core.errors import ConfigError
from ...core.evaluate.samples import SampleProgress, SampleSettings, SampleWritten
from ...core.run.samples import SampleComparison, SamplePair, samples_report
from ..widgets import dspin, hint_label, spin

# how many of the latest prompts go into the model card
CARD_SAMPLES = 3
WHICH = ("dense", "pruned")


class TryItPane(QWidget):
    """Prompt, decoding settings, Generate / Cancel, and the dense and pruned texts side by side."""

    generate_requested = Signal(str, object)  # prompt, SampleSettings
    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.prompt = QPlainTextEdit()
        self.prompt.setPlaceholderText("A prompt for both models to continue, e.g. 'The capital of France is'")
        self.prompt.setPlainText("The capital of France is")
        self.prompt.setMaximumHeight(70)
        self.prompt.setTabChangesFocus(True)
        self.new_tokens = spin(1, 1024, 64, "How many tokens each model writes at most (it stops earlier at "
                                            "an end-of-text token).")
        self.temperature = dspin(0.0, 2.0, 0.0, "0 = greedy: always the most likely token (seed and top-p change "
                                                "nothing). Above 0: sampled, the same random numbers for both models.",
                                 step=0.1)
        self.temperature.setSpecialValueText("greedy")
        self.top_p = dspin(0.05, 1.0, 0.95, "Sample from the smallest set of tokens holding this much probability.")
        self.seed = spin(0, 2 ** 31 - 1, 0, "The random stream of sampling; the same for both models.")
        row = QHBoxLayout()
        for label, w in (("Ne&w tokens:", self.new_tokens), ("Temperat&ure:", self.temperature),
                         ("Top-&p:", self.top_p), ("S&eed:", self.seed)):
            lab = QLabel(label)
            lab.setBuddy(w)
            row.addWidget(lab)
            row.addWidget(w)
        row.addStretch(1)
        self.generate_button = QPushButton("&Generate both")
        self.generate_button.setToolTip("Continue the prompt with the dense and the pruned model.")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        btns = QHBoxLayout()
        btns.addWidget(self.generate_button)
        btns.addWidget(self.cancel_button)
        btns.addStretch(1)
        self.availability = hint_label()
        self.texts: dict[str, QPlainTextEdit] = {}
        self.titles: dict[str, QLabel] = {}
        cols = QGridLayout()
        for c, which in enumerate(WHICH):
            title = QLabel(f"<b>{which.capitalize()} model</b>")
            text = QPlainTextEdit()
            text.setReadOnly(True)
            text.setMinimumHeight(110)
            text.setPlaceholderText("(not generated yet)")
            self.titles[which], self.texts[which] = title, text
            cols.addWidget(title, 0, c)
            cols.addWidget(text, 1, c)
        form = QFormLayout()
        lab = QLabel("P&rompt:")
        lab.setBuddy(self.prompt)
        form.addRow(lab, self.prompt)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(form)
        lay.addLayout(row)
        lay.addLayout(btns)
        lay.addWidget(self.availability)
        lay.addLayout(cols, 1)
        lay.addWidget(hint_label(f"The latest {CARD_SAMPLES} prompts with both texts go into the exported model "
                                 "card, labelled, with these settings."))
        self._prompt_shown = ""
        self._recent: list[SampleComparison] = []  # newest last, one per prompt
        self.generate_button.clicked.connect(self._generate)
        self.temperature.valueChanged.connect(self._sampling_changed)
        self._sampling_changed()
        self.cancel_button.clicked.connect(self.cancel_requested)

    # ---- what the user asks for ---------------------------------------------------------------
    def settings(self) -> SampleSettings:
        """The decoding settings of the controls (raises ConfigError on bad values)."""
        return SampleSettings(max_new_tokens=self.new_tokens.value(), temperature=round(self.temperature.value(), 2),
                              top_p=round(self.top_p.value(), 2), seed=self.seed.value())

    def _sampling_changed(self, *_a: Any) -> None:
        """Top-p and the seed act only when sampling (temperature above 0)."""
        sampled = self.temperature.value() > 0
        self.top_p.setEnabled(sampled)
        self.seed.setEnabled(sampled)

    def prompt_text(self) -> str:
        return self.prompt.toPlainText()

    def _generate(self) -> None:
        prompt = self.prompt_text()
        if not prompt.strip():
            self.availability.setText("Write a prompt first.")
            return
        try:
            settings = self.settings()
        except ConfigError as e:
            self.availability.setText(str(e))
            return
        self.generate_requested.emit(prompt, settings)

    # ---- what the panel tells it --------------------------------------------------------------
    def set_available(self, can_generate: bool, note: str) -> None:
        """Whether Generate can act now, and a sentence on what it will do (or why it cannot)."""
        self.generate_button.setEnabled(can_generate)
        self.availability.setText(note)

    def set_running(self, running: bool) -> None:
        self.cancel_button.setEnabled(running)
        if running:
            self.generate_button.setEnabled(False)

    def begin(self, prompt: str) -> None:
        """A generation starts: empty both texts."""
        self._prompt_shown = prompt
        for which in WHICH:
            self.texts[which].clear()
            self.titles[which].setText(f"<b>{which.capitalize()} model</b>")

    def show_event(self, ev: Any) -> None:
        """A continuation's progress or end, in its column."""
        if isinstance(ev, SampleProgress) and ev.which in self.texts:
            self.texts[ev.which].setPlainText(self._prompt_shown + ev.text)
            self.titles[ev.which].setText(f"<b>{ev.which.capitalize()} model</b> · writing {ev.done} / {ev.total}")
        elif isinstance(ev, SampleWritten) and ev.which in self.texts:
            self.texts[ev.which].setPlainText(ev.prompt + ev.text)
            how = "known from before" if ev.tokens == 0 and ev.text else (
                f"{ev.tokens} tokens" + (", ended by the model" if ev.ended else ""))
            self.titles[ev.which].setText(f"<b>{ev.which.capitalize()} model</b> · {how}")

    def show_comparison(self, comparison: SampleComparison) -> None:
        """The finished texts; a comparison with both kept for the card (newest first, one per prompt)."""
        for pair in comparison.pairs:
            for which in WHICH:
                text = getattr(pair, which)
                if text is not None:
                    self.texts[which].setPlainText(pair.prompt + text)
        full = [p for p in comparison.pairs if p.dense is not None and p.pruned is not None]
        if full:
            prompts = {p.prompt for p in full}
            self._recent = [c for c in self._recent if not ({p.prompt for p in c.pairs} & prompts)]
            self._recent.append(SampleComparison(comparison.settings, tuple(full), comparison.dense_from))
            self._recent = self._recent[-CARD_SAMPLES:]

    def text_of(self, which: str) -> str:
        return self.texts[which].toPlainText()

    # ---- for the model card -------------------------------------------------------------------
    def forget_samples(self) -> None:
        """A new run (or model): the texts kept for the card belong to the previous one."""
        self._recent = []
        for which in WHICH:
            self.texts[which].clear()
            self.titles[which].setText(f"<b>{which.capitalize()} model</b>")

    def card_samples(self) -> dict[str, Any] | None:
        """The report's ``samples`` for the card: the latest comparisons that share the newest one's
        settings (one decoding per card); None when there are none."""
        if not self._recent:
            return None
        settings = self._recent[-1].settings
        pairs: list[SamplePair] = []
        for c in reversed(self._recent):
            if c.settings == settings:
                pairs += c.pairs
        return samples_report(SampleComparison(settings, tuple(reversed(pairs))))
