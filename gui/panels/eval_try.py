"""The Evaluate step's "use the result" parts: the "try it" pane's job and the "Open in Ollama" action.

:class:`TryIt` runs :func:`~prunestudio.core.run.samples.iter_compare` for the pane
(:mod:`..views.try_it`): the pruned model is the one in memory; the dense text comes from the
dense model in memory before a run, or, after it, from a second copy of the original weights loaded
for it and let go (memory a second time and a load, like the dense perplexity after a run). Dense
texts already written for a prompt with the same settings are kept and not written again, so a
prompt tried before the run costs no second copy after it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtWidgets import QGroupBox, QVBoxLayout

from ...core.errors import PruneStudioError
from ...core.evaluate.samples import SampleProgress, SampleSettings, SampleWritten
from ...core.run.ollama import create_command, write_modelfile
from ...core.run.samples import SampleComparison, iter_compare
from ..jobs import PanelJob
from ..state import ModelStatus
from ..views.ollama import OllamaDialog
from ..views.try_it import TryItPane

if TYPE_CHECKING:
    from .eval import EvalPanel


class TryIt:
    """The pane in its group box, and its job."""

    def __init__(self, panel: "EvalPanel") -> None:
        self.panel = panel
        self.state = panel.state
        self.pane = TryItPane()
        self.box = QGroupBox("Try it: the dense and the pruned model side by side")
        QVBoxLayout(self.box).addWidget(self.pane)
        self.job = PanelJob(self.state, panel.status)
        self._dense_texts: dict[tuple[Any, ...], dict[str, str]] = {}  # (model, settings) -> prompt -> text
        self._run = self.state.run
        self.pane.generate_requested.connect(self.generate)
        self.pane.cancel_requested.connect(self.job.cancel)

    def _key(self, settings: SampleSettings) -> tuple[Any, ...]:
        return (self.state.model_args, self.state.dense_signature, settings)

    def card_samples(self) -> dict[str, Any] | None:
        return self.pane.card_samples()

    def _copy_cost(self) -> str:
        from ...core.model.memory import format_bytes
        from ...core.run.evaluation import weights_bytes

        loaded = self.state.loaded
        return f"about {format_bytes(weights_bytes(loaded))}" if loaded is not None else "its memory"

    def _copy_fits(self) -> bool:
        """Whether to load a second copy of the original weights: yes when it fits in the memory
        available, or when the user says so."""
        from ...core.model.memory import available_memory, format_bytes
        from ...core.run.evaluation import weights_bytes
        from .. import dialogs

        loaded = self.state.loaded
        need = weights_bytes(loaded)
        avail = available_memory(str(loaded.device))
        free = avail.get("device_free") if loaded.device.type == "cuda" else avail.get("host_available")
        if free is None or need <= free:
            return True
        return dialogs.confirm(
            self.panel, "Not enough memory?",
            f"The dense model's text needs a second copy of the original model: about {format_bytes(need)}, "
            f"and {format_bytes(free)} is available.", "Load it anyway?", "Load anyway", "Cancel")

    def refresh(self) -> None:
        """Forget the samples of a previous run; say what Generate does now, or why it cannot."""
        st = self.state
        if st.run is not self._run:
            if st.run is None or self._run is None or st.run.result is not self._run.result:
                self.pane.forget_samples()
            self._run = st.run
        if self.job.running:
            self.pane.set_running(True)
            return
        self.pane.set_running(False)
        if st.busy:
            self.pane.set_available(False, "Wait for the current job to finish.")
        elif st.loaded is None or st.model_status in (ModelStatus.NONE, ModelStatus.LOADING):
            self.pane.set_available(False, "Load a model in step 1 first.")
        elif st.model_status == ModelStatus.DENSE:
            self.pane.set_available(True, "No pruned model yet: Generate writes the dense model's text. Run step 4 "
                                          "and generate again to see the pruned model's beside it (the dense text "
                                          "is kept, not written again).")
        elif st.exportable():
            self.pane.set_available(True, "Writes the pruned model's text, then the dense model's with a second copy "
                                          f"of the original model loaded for it ({self._copy_cost()} more memory "
                                          "and a load), unless that prompt was written with these settings before.")
        else:
            self.pane.set_available(False, "The model in memory is only partly pruned: run step 4 again to compare.")

    def generate(self, prompt: str, settings: SampleSettings) -> None:
        st = self.state
        key = self._key(settings)
        known = {prompt: self._dense_texts[key][prompt]} if prompt in self._dense_texts.get(key, {}) else {}
        if st.model_status == ModelStatus.DENSE and st.loaded is not None:
            pruned, dense, what = None, st.loaded, "the dense model"
        elif st.exportable():
            pruned, dense = st.loaded, (None if known else st.model_args)
            if dense is not None and not self._copy_fits():
                return
            what = "the pruned model" + (", then a second copy of the dense model" if dense is not None else "")
        else:
            self.refresh()
            return
        self.pane.begin(prompt)
        w = self.job.start(iter_compare, [prompt], settings, pruned, dense, known, name="trying the prompt",
                           busy_text=f"Continuing the prompt with {what}…", on_event=self._event,
                           on_done=lambda comp: self._done(key, comp), on_finished=self.panel._refresh)
        self.pane.set_running(w is not None)
        if w is None:
            self.refresh()

    def _event(self, ev: Any) -> None:
        if isinstance(ev, (SampleProgress, SampleWritten)):
            self.pane.show_event(ev)
        else:
            self.panel._event(ev)

    def _done(self, key: tuple[Any, ...], comp: SampleComparison) -> None:
        for pair in comp.pairs:
            if pair.dense is not None:
                self._dense_texts.setdefault(key, {})[pair.prompt] = pair.dense
        self.pane.show_comparison(comp)
        if all(p.pruned is not None for p in comp.pairs):
            self.panel.status.set("ok", f"Both models continued the prompt ({comp.settings.describe()}).")
        else:
            self.panel.status.set("ok", "The dense model continued the prompt; run step 4 to see the pruned model's "
                                        "text beside it.")


def open_in_ollama(panel: "EvalPanel") -> OllamaDialog | None:
    """Write the Modelfile into the export folder and show the command that imports it."""
    st = panel.state
    if st.export_path is None:
        panel.status.set("warn", "Export the model first; the Modelfile is written into the export folder.")
        return None
    report = st.run.report if st.run is not None else None
    try:
        path, mf = write_modelfile(st.export_path, report)
    except PruneStudioError as e:
        panel.status.set("error", str(e))
        return None
    panel.status.set("warn" if mf.warning() else "ok",
                     mf.warning() or f"Wrote {path}; the dialog shows the command that imports it into Ollama.")
    dialog = OllamaDialog(path, mf, create_command(path), panel)
    panel._ollama_dialog = dialog  # keep it alive while it is shown
    dialog.open()
    return dialog
