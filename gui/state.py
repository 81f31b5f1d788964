"""The window's shared state: the model in memory, the calibration set, the settings, the last run.

Panels are views of this object: they read it, change it through its methods, and subscribe to
its signals. It also owns the one rule about the model in memory (see :mod:`tasks`): once a run
pruned it (fully or partly), every job that needs the dense model gets ``None`` and reloads it
(the dense perplexity after a complete run excepted: it keeps the pruned model), and only a
completely pruned model of the latest run may be evaluated as pruned or exported.

What is in memory is a :class:`ModelStatus`, how the latest run went a :class:`RunStatus`.
One job touching the model runs at a time (:meth:`start`; panels start theirs through
:class:`jobs.PanelJob`); Esc cancels it (:meth:`cancel`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from ..core.calib.calibset import CalibrationSet
from ..core.config import CalibConfig, PruneConfig, Recipe
from ..core.events import Event, Message, PhaseDone, PhaseStarted
from ..core.model.loading import LoadedModel
from ..core.model.memory import available_memory, format_bytes
from ..core.prune import memory
from ..core.prune.result import PruneResult, is_incomplete
from ..core.run.evaluation import EvalSettings, PerplexityMeasured
from ..core.run.history import History
from ..core.run.load import LoadArgs
from ..core.run.run import DenseMeasured, PruneFinished, RunOutcome
from .tasks import ModelReady
from .worker import Worker

log = logging.getLogger("prunestudio.gui")


class ModelStatus(StrEnum):
    """What is in memory: nothing, a model being loaded, the dense model, a (partly) pruned one."""

    NONE = "none"
    LOADING = "loading"
    DENSE = "dense"
    PRUNED = "pruned"  # completely pruned by the latest run: may be evaluated and exported
    INCOMPLETE = "incomplete"  # partly pruned (a cancelled or failed run): reloaded before the next job


class RunStatus(StrEnum):
    """How the latest run went (``NONE``: no run since the model was loaded)."""

    NONE = "none"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


_DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}


class AppState(QObject):
    model_changed = Signal()
    calib_changed = Signal()
    config_changed = Signal()  # prune / calibration / evaluation settings
    run_changed = Signal()  # run status, last result, export
    busy_changed = Signal(bool)
    recipe_applied = Signal(object)  # Recipe: panels set their controls from it
    history_changed = Signal()
    logged = Signal(str, str)  # text, level

    def __init__(self, history_path: str | Path | None = None) -> None:
        super().__init__()
        self.load_args = LoadArgs("demo")  # step 1's current choice (what a recipe saves)
        self.model_args = LoadArgs("demo")  # what the model in memory was loaded from (reloads)
        self.loaded: LoadedModel | None = None
        self.model_status: ModelStatus = ModelStatus.NONE
        self.module_shapes: dict[str, tuple[int, int]] = {}
        self.calib: CalibrationSet | None = None
        self.calib_config = CalibConfig()
        self.prune_config: PruneConfig | None = PruneConfig()
        self.prune_error = ""
        self.eval_settings: EvalSettings | None = None
        self.result: PruneResult | None = None  # the latest finished pruning
        self.run: RunOutcome | None = None  # the latest finished run (with its report)
        self.run_status: RunStatus = RunStatus.NONE
        self.export_path: Path | None = None
        self.history_id: int | None = None
        self.dense_signature: str | None = None  # the dense weights' (ppl_cache.weights_signature), from the load
        self.dense_cache: dict[tuple[Any, ...], float] = {}  # EvalSettings.cache_key -> ppl
        self.pruned_ppl: dict[tuple[Any, ...], float] = {}  # the same, for the latest run's model
        self.ppl_windows: dict[tuple[Any, ...], int] = {}  # the same key -> windows a perplexity read
        self.current: Worker | None = None
        self._history_path = history_path
        self._history: History | None = None

    # ---- jobs ---------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.current is not None

    def start(self, worker: Worker) -> bool:
        """Start ``worker`` unless another job runs; common events go to the log."""
        if self.current is not None:
            self.log(f"Busy with {self.current.name}; wait for it or cancel it (Esc).", "warning")
            return False
        self.current = worker
        worker.yielded.connect(self._common_event)
        worker.finished.connect(lambda w=worker: self._job_finished(w))
        worker.cancelled.connect(lambda w=worker: self.log(f"{w.name.capitalize()} cancelled.", "warning"))
        worker.errored.connect(lambda info, w=worker: self.log(f"{w.name.capitalize()} failed: {info.exception}", "error"))
        worker.start()
        self.busy_changed.emit(True)
        return True

    def cancel(self) -> None:
        if self.current is not None:
            self.log(f"Cancelling {self.current.name}…", "warning")
            self.current.cancel()

    def _job_finished(self, worker: Worker) -> None:
        if self.current is worker:
            self.current = None
        loaded = self.loaded
        if loaded is not None and is_incomplete(loaded.model) and self.model_status != ModelStatus.INCOMPLETE:
            self.model_status = ModelStatus.INCOMPLETE
            self.log("The model in memory is only partly pruned; it will be reloaded before the next "
                     "job and cannot be exported.", "warning")
            self.model_changed.emit()
        if self.loaded is None and self.model_status == ModelStatus.LOADING:  # a (re)load failed or was cancelled
            self.model_status = ModelStatus.NONE
            self.log("No model in memory now; load one in step 1.", "warning")
            self.model_changed.emit()
        self.busy_changed.emit(False)

    def _common_event(self, ev: Event) -> None:
        if isinstance(ev, ModelReady):
            self.dense_signature = ev.weights_signature or None
            self.set_model(ev.loaded, ev.tokenizer_fingerprint or None)
        elif isinstance(ev, PerplexityMeasured):
            es = EvalSettings(ev.source, ev.seqlen, ev.max_windows)
            self.ppl_windows[es.cache_key(self.model_args)] = ev.windows
        elif isinstance(ev, DenseMeasured):
            self.dense_cache[ev.settings.cache_key(self.model_args)] = ev.ppl
            self.run_changed.emit()
        elif isinstance(ev, PruneFinished):
            self.result = ev.result
            self.model_status = ModelStatus.PRUNED
            self.model_changed.emit()
        elif isinstance(ev, Message):
            self.log(ev.text, ev.level)
        elif isinstance(ev, PhaseStarted):
            self.log(f"{ev.phase}: started" + (f" ({ev.total} steps)" if ev.total else ""))
        elif isinstance(ev, PhaseDone):
            self.log(f"{ev.phase}: done in {ev.seconds:.1f} s")

    def log(self, text: str, level: str = "info") -> None:
        getattr(log, "warning" if level == "warning" else "error" if level == "error" else "info")(text)
        self.logged.emit(text, level)

    # ---- the model ----------------------------------------------------------------------------
    def set_load_args(self, args: LoadArgs) -> None:
        self.load_args = args

    def set_model(self, loaded: LoadedModel | None, tokenizer_fingerprint: str | None = None) -> None:
        """A new model in memory; a calibration set made for another tokenizer is dropped
        (``tokenizer_fingerprint`` None: a reload of the same model, nothing to check)."""
        self.loaded = loaded
        self.model_status = ModelStatus.DENSE if loaded is not None else ModelStatus.NONE
        try:
            self.module_shapes = memory.module_shapes(loaded.model) if loaded is not None else {}
        except Exception:  # noqa: BLE001 - shapes only refine the memory estimate
            self.module_shapes = {}
        if (self.calib is not None and loaded is not None and tokenizer_fingerprint
                and self.calib.tokenizer_fingerprint and tokenizer_fingerprint != self.calib.tokenizer_fingerprint):
            self.log("The calibration set was made for another tokenizer; it was cleared.", "warning")
            self.set_calib(None)
        self.model_changed.emit()
        self.config_changed.emit()

    def dense_model(self) -> LoadedModel | None:
        """The loaded model if it is dense; otherwise None (and the pruned one is let go)."""
        if self.model_status == ModelStatus.DENSE:
            return self.loaded
        if self.loaded is not None:
            self.forget_model()
        return None

    def begin_loading(self, args: LoadArgs) -> None:
        """A load starts: drop the model in memory (if any) first, so two never coexist."""
        if args != self.model_args:
            self.dense_signature = None  # another model: its own signature comes with ModelReady
        self.load_args = self.model_args = args
        if self.loaded is not None:
            self.forget_model()
        else:
            self.model_status = ModelStatus.LOADING
            self.model_changed.emit()

    def load_failed(self) -> None:
        if self.loaded is None and self.model_status == ModelStatus.LOADING:
            self.model_status = ModelStatus.NONE
            self.model_changed.emit()

    def forget_model(self) -> None:
        """Drop the pruned / partly pruned model (memory) before a reload."""
        self.loaded = None
        if self.run is not None and self.run.loaded is not None:
            self.run = replace(self.run, loaded=None)
        self.model_status = ModelStatus.LOADING
        self.model_changed.emit()
        self.run_changed.emit()

    def has_model(self) -> bool:
        return self.loaded is not None or self.model_status == ModelStatus.LOADING

    def dense_eval_blocker(self) -> str:
        """Why the dense perplexity cannot be measured now ("" when it can): with the dense model in
        memory it is measured on it; after a complete run it comes from the dense cache or a second
        copy of the original model (the pruned one is kept); a partly pruned model is replaced by a
        reload first."""
        if self.busy:
            return "Wait for the current job to finish (or cancel it with Esc)."
        if self.eval_settings is None:
            return "Choose an evaluation text first."
        if self.model_status == ModelStatus.LOADING:
            return "The model is still loading."
        if self.model_status == ModelStatus.NONE:
            return "Load a model in step 1 first."
        return ""

    def exportable(self) -> bool:
        r = self.run
        return (r is not None and r.loaded is not None and r.loaded is self.loaded
                and self.model_status == ModelStatus.PRUNED and not is_incomplete(r.loaded.model))

    # ---- calibration and settings -------------------------------------------------------------
    def set_calib(self, calib: CalibrationSet | None) -> None:
        self.calib = calib
        self.calib_changed.emit()

    def calib_edited(self) -> None:
        self.calib_changed.emit()

    def calib_ready(self) -> bool:
        if self.prune_config is not None and not self.prune_config.needs_calibration:
            return True
        return self.calib is not None and len(self.calib) > 0

    def set_calib_config(self, cfg: CalibConfig) -> None:
        self.calib_config = cfg
        self.config_changed.emit()

    def set_prune_config(self, cfg: PruneConfig | None, error: str = "") -> None:
        self.prune_config, self.prune_error = cfg, error
        self.config_changed.emit()

    def set_eval_settings(self, es: EvalSettings | None) -> None:
        self.eval_settings = es
        self.config_changed.emit()

    def set_pruned_ppl(self, es: EvalSettings, ppl: float) -> None:
        """A pruned perplexity of the latest run; the export report describes the latest one."""
        self.pruned_ppl[es.cache_key(self.model_args)] = ppl
        if self.run is not None:
            self.run.recipe = replace(self.run.recipe, eval_ppl=(es.source,), eval_seqlen=es.seqlen,
                                      eval_max_windows=es.max_windows)
            self.run.ppl_pruned = ppl
            self.run.ppl_dense = self.cached_dense(es)
            self.run.evaluation = es
            self.run.windows = self.windows_read(es)
            if self.run.loaded is not None:  # the report says what the new numbers were measured on
                self.run.report = self.run.build_report()
                self._update_history(self.run.report)
        self.run_changed.emit()

    def ppl_table(self) -> list[tuple[str, int, int | None, float | None, float | None]]:
        """(source, seqlen, max windows, dense, pruned) for the current model's spec and settings."""
        a = self.model_args
        keys = [k for k in list(self.dense_cache) + list(self.pruned_ppl) if k[:3] == (a.spec, a.device, a.dtype)]
        rows = []
        for k in dict.fromkeys(keys):
            rows.append((k[3], k[4], k[5], self.dense_cache.get(k), self.pruned_ppl.get(k)))
        return rows

    def windows_read(self, es: EvalSettings) -> int | None:
        """How many windows a perplexity measured with ``es`` on the model in memory read (None: unknown)."""
        return self.ppl_windows.get(es.cache_key(self.model_args))

    def cached_dense(self, es: EvalSettings | None = None) -> float | None:
        es = es or self.eval_settings
        return None if es is None else self.dense_cache.get(es.cache_key(self.model_args))

    def recipe(self, model_in_memory: bool = False) -> Recipe:
        """The recipe of the controls; ``model_in_memory``: with the loaded model (for a run)."""
        es = self.eval_settings
        a = self.model_args if model_in_memory else self.load_args
        return Recipe(
            model=a.spec,
            prune=self.prune_config or PruneConfig(),
            calibration=self.calib_config,
            eval_ppl=(es.source,) if es else (),
            eval_seqlen=es.seqlen if es else None,
            eval_max_windows=es.max_windows if es else None,
            device=a.device,
            dtype=a.dtype,
            trust_remote_code=a.trust_remote_code,
        )

    def apply_recipe(self, recipe: Recipe) -> None:
        self.recipe_applied.emit(recipe)

    # ---- runs and history ---------------------------------------------------------------------
    def set_run_status(self, status: RunStatus) -> None:
        self.run_status = status
        self.run_changed.emit()

    def begin_run(self) -> None:
        """A run starts: the previous run's pruning result is no longer the latest."""
        self.result = None
        self.set_run_status(RunStatus.RUNNING)

    def forget_run(self) -> None:
        """A freshly loaded model: no run (and no pruning result) belongs to it yet."""
        self.result = None
        self.set_run_status(RunStatus.NONE)

    def finish_run(self, outcome: RunOutcome) -> None:
        self.run = outcome
        self.pruned_ppl = {}
        if outcome.evaluation is not None and outcome.ppl_pruned is not None:
            self.pruned_ppl[outcome.evaluation.cache_key(self.model_args)] = outcome.ppl_pruned
        self.result = outcome.result
        self.loaded = outcome.loaded
        self.model_status = ModelStatus.PRUNED
        self.export_path = None
        self.run_status = RunStatus.DONE
        try:
            self.history_id = self.history().add(outcome.report)
            self.history_changed.emit()
        except Exception as e:  # noqa: BLE001 - a broken history must not lose the run
            from . import errors

            errors.report(e, context="saving the run to the history")
        self.model_changed.emit()
        self.run_changed.emit()

    def set_exported(self, path: Path, report: dict[str, Any]) -> None:
        self.export_path = Path(path)
        if self.run is not None:
            self.run.report = report
        self._update_history(report, path)
        self.run_changed.emit()

    def _update_history(self, report: dict[str, Any] | None, path: Path | None = None) -> None:
        """Keep the run's history row in step with later evaluations and the export."""
        if self.history_id is None:
            return
        try:
            self.history().update(self.history_id, report, export_path=path)
            self.history_changed.emit()
        except Exception as e:  # noqa: BLE001 - a broken history must not lose the run
            from . import errors

            errors.report(e, context="updating the run in the history")

    def history(self) -> History:
        if self._history is None:
            self._history = History(self._history_path)
        return self._history

    # ---- memory -------------------------------------------------------------------------------
    def memory_estimate(self) -> tuple[dict[str, int], dict[str, int | None]] | None:
        if self.loaded is None:
            return None
        info = dict(self.loaded.info)
        if self.module_shapes:
            info["module_shapes"] = self.module_shapes
        cfg = self.prune_config or PruneConfig()
        if self.calib is not None and len(self.calib):
            n, L = len(self.calib), self.calib.seqlen
        else:
            n, L = self.calib_config.nsamples, self.calib_config.seqlen
        nbytes = _DTYPE_BYTES.get(str(info.get("dtype")), 4)
        est = memory.estimate_run_memory(info, n, L, cfg, nbytes, cfg.batch_size, cfg.owl,
                                          offload=cfg.offload_mode, one_pass=cfg.passes_once)
        avail = available_memory(str(self.loaded.device))
        return est, avail

    def memory_verdict(self) -> tuple[str, str]:
        """(``ok`` | ``warn`` | ``""``, sentence) about whether the run fits."""
        got = self.memory_estimate()
        if got is None:
            return "", ""
        est, avail = got
        fb = format_bytes
        dev = str(self.loaded.device) if self.loaded is not None else "cpu"
        # the weights are already in memory: what is still needed is the rest
        extra_host = est["total"] - est["weights"] if dev == "cpu" else est["weights"] // 20
        host_ok = avail["host_available"] is None or extra_host <= avail["host_available"]
        dev_ok = True
        parts = [f"needs about {fb(extra_host)} more host memory, {fb(avail['host_available'])} available"]
        if dev.startswith("cuda"):
            dev_ok = avail["device_free"] is None or est["device"] <= avail["device_free"]
            parts.append(f"about {fb(est['device'])} on {dev}, {fb(avail['device_free'])} free")
        text = "This run " + "; ".join(parts) + "."
        if host_ok and dev_ok:
            return "ok", text
        return "warn", text + " It will probably not fit: use fewer or shorter calibration samples."
