"""Step 3: how to prune (a PruneConfig); the buttons that save and load whole recipes (:mod:`recipes`)."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ...core.config import PruneConfig, Recipe
from ...core.errors import PruneStudioError
from ...core.model import threads
from ...core.prune.methods import registry
from .. import recipes
from ..settings import Settings
from ..state import AppState
from ..widgets import Collapsible, StatusLine, dspin, hint_label, spin

STRUCTURES = (("unstructured", "Unstructured (any weights)"), ("2:4", "2:4 (two of every four; GPU sparse kernels)"),
              ("4:8", "4:8 (four of every eight)"), ("custom", "Custom N:M"))
TIPS = {
    "method": "The rule that decides which weights to remove.",
    "sparsity": "Share of weights set to zero in every pruned layer (the average over layers with OWL).",
    "structure": "Unstructured removes any weights; N:M removes N of every M neighbouring weights, which some GPUs run faster.",
    "n": "N: how many weights are removed in each group.",
    "m": "M: the size of each group of neighbouring weights.",
    "owl": "Gives layers with many outlier weights less sparsity and the others more (same average).",
    "owl_m": "A weight counts as an outlier when its importance is this many times the layer's mean.",
    "owl_lambda": "How far a layer's sparsity may move from the target, up or down.",
    "dsnot_init": "Which method gives DSnoT its starting mask.",
    "dsnot_cycles": "The most swap rounds DSnoT makes per row of weights.",
    "dsnot_threshold": "DSnoT stops swapping once the error change falls below this value.",
    "blocksize": "SparseGPT updates this many columns at a time; larger is faster and uses more memory.",
    "damp": "Stabilises SparseGPT's maths; raise it if you see warnings about the Hessian.",
    "skip": "Comma-separated parts of module names that stay dense, e.g. down_proj or o_proj.",
    "batch": "Calibration samples that go through a block at once; smaller saves memory.",
    "threads": "torch threads for CPU work, in self-generation (step 2) and runs: auto takes the CPUs this "
               "process may use less those other processes keep busy when a job starts (on a busy machine, "
               "threads that wait on each other make CPU work many times slower), never more than torch's "
               "default. The run's report records the number and why. It changes the speed, not the method (sums "
               "split across threads may round differently in the last bits, as between machines).",
    "offload": "Where the blocks wait while another is pruned. Host memory: only the block being pruned is on "
               "the GPU. Disk: the blocks stay in the model's safetensors files (models larger than RAM; the "
               "model is loaded that way); pruned blocks are written to a work folder, about 56% of their size at "
               "50% sparsity, and a run whose blocks would not fit there is refused before it starts. "
               "Compute device: the whole model stays on it (fastest, most memory).",
    "dsnot_rule": "Reference: keep swapping while the estimated error is above the threshold, as the "
                  "DSnoT authors' code does. Only decreasing: take a swap only when it lowers the estimated "
                  "error (Prune Studio's earlier rule).",
    "dsnot_skip": "Modules that keep their initial mask. The DSnoT paper refines attention only "
                  "(its default skips the MLP).",
    "one_pass": "One pass per block: every module is pruned as soon as all calibration batches have "
                "reached it, and the modules after it see its pruned output (less time, more memory). "
                "Two passes: the papers' order, statistics of the dense block, then its pruned outputs. "
                "Default: the method's own, shown in brackets.",
}

# the settings in the DSnoT and SparseGPT groups (PruneConfig fields)
DSNOT_FIELDS = frozenset({"dsnot_init", "dsnot_max_cycles", "dsnot_threshold", "dsnot_skip", "dsnot_rule"})
SPARSEGPT_FIELDS = frozenset({"sparsegpt_blocksize", "sparsegpt_damp"})


def method_text(name: str) -> str:
    """The line under the method list: the method's name and what it does."""
    method = registry.get(name)
    return f"{method.label}: {method.description}"


class PrunePanel(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.settings = Settings("pruning")
        self._applying = False

        main = QGroupBox("Method and target")
        form = QFormLayout(main)
        self.method = QComboBox()
        for method in registry.methods():
            self._add_method(method.name)
        self.method.setToolTip(TIPS["method"])
        self.method_text = hint_label()
        self.sparsity = dspin(1.0, 99.0, 50.0, TIPS["sparsity"], 1, 5.0, " %")
        self.structure = QComboBox()
        for key, label in STRUCTURES:
            self.structure.addItem(label, key)
        self.structure.setToolTip(TIPS["structure"])
        self.n = spin(1, 63, 2, TIPS["n"])
        self.m = spin(2, 64, 4, TIPS["m"])
        nm = QHBoxLayout()
        self.nm_label = QLabel("N:M =")
        nm.addWidget(self.nm_label)
        nm.addWidget(self.n)
        nm.addWidget(QLabel(":"))
        nm.addWidget(self.m)
        nm.addStretch(1)
        self.nm_row = QWidget()
        self.nm_row.setLayout(nm)
        nm.setContentsMargins(0, 0, 0, 0)
        for text, w in (("&Method:", self.method), ("", self.method_text), ("Target &sparsity:", self.sparsity),
                        ("S&tructure:", self.structure), ("", self.nm_row)):
            if text:
                lab = QLabel(text)
                lab.setBuddy(w)
                lab.setToolTip(w.toolTip())
                form.addRow(lab, w)
            else:
                form.addRow(w)

        self.owl = QGroupBox("&OWL: outlier-weighed sparsity per layer")
        self.owl.setCheckable(True)
        self.owl.setChecked(False)
        self.owl.setToolTip(TIPS["owl"])
        oform = QFormLayout(self.owl)
        self.owl_m = dspin(0.5, 100.0, 5.0, TIPS["owl_m"], 1, 0.5)
        self.owl_lambda = dspin(0.0, 0.49, 0.08, TIPS["owl_lambda"], 3, 0.01)
        oform.addRow(self._label("Outlier threshold M:", self.owl_m), self.owl_m)
        oform.addRow(self._label("Range λ:", self.owl_lambda), self.owl_lambda)

        self.dsnot = QGroupBox("DSnoT")
        dform = QFormLayout(self.dsnot)
        self.dsnot_init = QComboBox()
        self.dsnot_init.addItems(list(registry.names(refining=False)))
        self.dsnot_init.setToolTip(TIPS["dsnot_init"])
        self.dsnot_cycles = spin(0, 10000, 50, TIPS["dsnot_cycles"])
        self.dsnot_threshold = dspin(0.0, 100.0, 0.1, TIPS["dsnot_threshold"], 3, 0.05)
        dform.addRow(self._label("Initial mask:", self.dsnot_init), self.dsnot_init)
        dform.addRow(self._label("Max cycles:", self.dsnot_cycles), self.dsnot_cycles)
        dform.addRow(self._label("Threshold:", self.dsnot_threshold), self.dsnot_threshold)
        self.dsnot_skip = QComboBox()
        for text, key in (("MLP (as the paper)", "mlp"), ("Attention", "attention"), ("Nothing", "none")):
            self.dsnot_skip.addItem(text, key)
        self.dsnot_skip.setToolTip(TIPS["dsnot_skip"])
        dform.addRow(self._label("Leave unrefined:", self.dsnot_skip), self.dsnot_skip)
        self.dsnot_rule = QComboBox()
        for text, key in (("Reference (as the paper's code)", "reference"), ("Only decreasing", "decrease")):
            self.dsnot_rule.addItem(text, key)
        self.dsnot_rule.setToolTip(TIPS["dsnot_rule"])
        dform.addRow(self._label("Swap rule:", self.dsnot_rule), self.dsnot_rule)

        self.sgpt = QGroupBox("SparseGPT")
        gform = QFormLayout(self.sgpt)
        self.blocksize = spin(1, 4096, 128, TIPS["blocksize"], step=32)
        self.damp = dspin(0.0, 0.99, 0.01, TIPS["damp"], 3, 0.005)
        gform.addRow(self._label("Block size:", self.blocksize), self.blocksize)
        gform.addRow(self._label("Dampening:", self.damp), self.damp)

        other = QGroupBox("Layers")
        xform = QFormLayout(other)
        self.skip = QLineEdit()
        self.skip.setPlaceholderText("none (prune every linear layer in the blocks)")
        self.skip.setToolTip(TIPS["skip"])
        self.skip.setClearButtonEnabled(True)
        self.module_names = hint_label()
        xform.addRow(self._label("S&kip modules:", self.skip), self.skip)
        xform.addRow(self.module_names)
        adv = QWidget()
        aform = QFormLayout(adv)
        aform.setContentsMargins(12, 0, 0, 0)
        self.batch = spin(1, 1024, 8, TIPS["batch"])
        self.offload = QComboBox()
        for text, mode in (("Host memory", "cpu"), ("Disk (models larger than RAM)", "disk"),
                           ("Compute device (no offload)", "none")):
            self.offload.addItem(text, mode)  # a PruneConfig.offload_mode
        self.offload.setToolTip(TIPS["offload"])
        aform.addRow(self._label("Batch size:", self.batch), self.batch)
        aform.addRow(self._label("&Blocks wait in:", self.offload), self.offload)
        self.one_pass = QComboBox()
        for text, value in (("Method's default", None), ("One pass per block", True),
                            ("Two passes (reference order)", False)):
            self.one_pass.addItem(text, value)  # the PruneConfig.one_pass value itself
        self.one_pass.setToolTip(TIPS["one_pass"])
        aform.addRow(self._label("Pass order:", self.one_pass), self.one_pass)
        self.threads = spin(0, 1024, 0, TIPS["threads"])
        self.threads.setSpecialValueText("auto")
        aform.addRow(self._label("CPU &threads:", self.threads), self.threads)
        xform.addRow(Collapsible("Advanced", adv))

        self.status = StatusLine()
        recipe = QHBoxLayout()
        self.save_button = QPushButton("Save &recipe…")
        self.save_button.setToolTip("Save model, calibration, pruning and evaluation settings as a JSON recipe "
                                    "(the CLI runs it with --recipe).")
        self.load_button = QPushButton("Load r&ecipe…")
        self.load_button.setToolTip("Set every step from a saved recipe.")
        recipe.addWidget(self.save_button)
        recipe.addWidget(self.load_button)
        recipe.addStretch(1)

        cols = QHBoxLayout()
        left = QVBoxLayout()
        left.addWidget(main)
        left.addWidget(self.owl)
        left.addStretch(1)
        right = QVBoxLayout()
        right.addWidget(self.dsnot)
        right.addWidget(self.sgpt)
        right.addWidget(other)
        right.addStretch(1)
        cols.addLayout(left, 1)
        cols.addLayout(right, 1)
        lay = QVBoxLayout(self)
        lay.addLayout(cols)
        lay.addWidget(self.status)
        lay.addLayout(recipe)
        lay.addStretch(1)

        for w in (self.method, self.structure, self.dsnot_init, self.dsnot_skip, self.dsnot_rule):
            w.currentIndexChanged.connect(self._changed)
        for w in (self.sparsity, self.owl_m, self.owl_lambda, self.dsnot_threshold, self.damp):
            w.valueChanged.connect(self._changed)
        for w in (self.n, self.m, self.dsnot_cycles, self.blocksize, self.batch):
            w.valueChanged.connect(self._changed)
        self.owl.toggled.connect(self._changed)
        self.offload.currentIndexChanged.connect(self._changed)
        self.one_pass.currentIndexChanged.connect(self._changed)
        self.skip.textChanged.connect(self._changed)
        self.threads.setValue(int(self.settings.get("threads", 0) or 0))
        self._threads_changed(self.threads.value())
        self.threads.valueChanged.connect(self._threads_changed)
        self.save_button.clicked.connect(self.save_recipe_dialog)
        self.load_button.clicked.connect(self.load_recipe_dialog)
        state.recipe_applied.connect(self.apply_recipe)
        state.model_changed.connect(self._model_changed)
        self.set_config(PruneConfig())  # the engine's defaults, then the user's last choices
        self._restore()
        self._changed()
        self._model_changed()

    def _add_method(self, name: str) -> int:
        """Add a registered method to the method list; returns its index."""
        self.method.addItem(registry.get(name).label, name)
        self.method.setItemData(self.method.count() - 1, method_text(name), 3)  # ToolTipRole
        return self.method.count() - 1

    @staticmethod
    def _label(text: str, w: QWidget) -> QLabel:
        lab = QLabel(text)
        lab.setBuddy(w)
        lab.setToolTip(w.toolTip())
        return lab

    # ---- config <-> controls -----------------------------------------------------------------
    def structure_text(self) -> str:
        key = str(self.structure.currentData())
        return f"{self.n.value()}:{self.m.value()}" if key == "custom" else key

    def config(self) -> PruneConfig:
        skip = tuple(s.strip() for s in self.skip.text().split(",") if s.strip())
        return PruneConfig(
            method=str(self.method.currentData()), sparsity=round(self.sparsity.value() / 100.0, 6),
            structure=self.structure_text(), owl=self.owl.isChecked(), owl_m=self.owl_m.value(),
            owl_lambda=self.owl_lambda.value(), dsnot_init=self.dsnot_init.currentText(),
            dsnot_max_cycles=self.dsnot_cycles.value(), dsnot_threshold=self.dsnot_threshold.value(),
            dsnot_skip=str(self.dsnot_skip.currentData()), dsnot_rule=str(self.dsnot_rule.currentData()),
            sparsegpt_blocksize=self.blocksize.value(), sparsegpt_damp=self.damp.value(),
            skip_modules=skip, batch_size=self.batch.value(), one_pass=self.one_pass.currentData(),
        ).with_offload_mode(str(self.offload.currentData()))

    def set_config(self, cfg: PruneConfig) -> None:
        self._applying = True
        try:
            i = self.method.findData(cfg.method)
            self.method.setCurrentIndex(i if i >= 0 else self._add_method(cfg.method))  # registered since
            self.sparsity.setValue(cfg.sparsity * 100.0)
            n, m = cfg.nm
            i = self.structure.findData(cfg.structure)
            if i < 0:
                i = self.structure.findData("custom")
                self.n.setValue(n)
                self.m.setValue(m)
            self.structure.setCurrentIndex(i)
            self.owl.setChecked(cfg.owl)
            self.owl_m.setValue(cfg.owl_m)
            self.owl_lambda.setValue(cfg.owl_lambda)
            self.dsnot_init.setCurrentText(cfg.dsnot_init)
            self.dsnot_cycles.setValue(cfg.dsnot_max_cycles)
            self.dsnot_threshold.setValue(cfg.dsnot_threshold)
            self.dsnot_skip.setCurrentIndex(max(0, self.dsnot_skip.findData(cfg.dsnot_skip)))
            self.dsnot_rule.setCurrentIndex(max(0, self.dsnot_rule.findData(cfg.dsnot_rule)))
            self.blocksize.setValue(cfg.sparsegpt_blocksize)
            self.damp.setValue(cfg.sparsegpt_damp)
            self.skip.setText(", ".join(cfg.skip_modules))
            self.batch.setValue(cfg.batch_size)
            self.offload.setCurrentIndex(self.offload.findData(cfg.offload_mode))
            self.one_pass.setCurrentIndex(self.one_pass.findData(cfg.one_pass))
        finally:
            self._applying = False
        self._changed()

    def apply_recipe(self, recipe: Recipe) -> None:
        self.set_config(recipe.prune)

    def _changed(self) -> None:
        if self._applying:
            return
        method = str(self.method.currentData())
        self.method_text.setText(method_text(method))
        self.nm_row.setVisible(self.structure.currentData() == "custom")
        # a method's group of settings is enabled when the chosen method, or the one it refines, reads them
        chosen = PruneConfig(method=method, dsnot_init=self.dsnot_init.currentText())
        used = registry.settings_used(chosen)
        for group, fields in ((self.dsnot, DSNOT_FIELDS), (self.sgpt, SPARSEGPT_FIELDS)):
            group.setEnabled(bool(used & fields))
        once = registry.default_one_pass(chosen)
        self.one_pass.setItemText(0, f"Method's default ({'one pass' if once else 'two passes'})")
        self.sparsity.setEnabled(self.structure.currentData() == "unstructured" or self.owl.isChecked())
        try:
            cfg = self.config()
        except PruneStudioError as e:
            self.status.set("warn", e.message)
            self.state.set_prune_config(None, e.message)
            return
        if cfg.nm != (0, 0) and not cfg.owl:
            n, m = cfg.nm
            note = f"{n}:{m} sets the sparsity to {n / m:.0%} (the target above is not used)."
            self.status.set("info", note)
        elif not cfg.needs_calibration:
            label = registry.get(cfg.method).label
            self.status.set("info", f"{label} pruning needs no calibration data (step 2 is skipped).")
        else:
            self.status.set("", "")
        self.state.set_prune_config(cfg)
        self._remember(cfg)

    def _model_changed(self) -> None:
        lm = self.state.loaded
        if lm is None:
            self.module_names.setText("Load a model to see its module names.")
        else:
            mods = lm.info.get("modules_per_block") or []
            self.module_names.setText("Modules in each block: " + ", ".join(mods))

    def _threads_changed(self, n: int) -> None:
        """Every later job of this window (generation, runs) asks for ``n`` threads (0: auto); kept
        in the settings, not in recipes (it belongs to the machine, not to the pruning)."""
        threads.set_requested(n or None)
        self.settings.set("threads", n)

    def _remember(self, cfg: PruneConfig) -> None:
        import json
        from dataclasses import asdict

        self.settings.set("config", json.dumps(asdict(cfg)))

    def _restore(self) -> None:
        import json

        raw = self.settings.get("config", "")
        if not raw:
            return
        try:  # through Recipe.from_dict: the same validation as recipe files
            self.set_config(Recipe.from_dict({"prune": json.loads(raw)}).prune)
        except (PruneStudioError, ValueError, TypeError):
            pass

    # ---- recipes (the File menu's Open / Save recipe come here too) --------------------------
    def save_recipe_dialog(self) -> None:
        path = recipes.save_recipe_dialog(self, self.state)
        if path:
            self.status.set("ok", f"Recipe saved to {path}.")

    def load_recipe_dialog(self) -> None:
        path = recipes.load_recipe_dialog(self, self.state)
        if path:
            self.status.set("ok", f"Recipe loaded from {path}.")
