"""Time estimates beside the buttons that start long jobs, and the ETA line of a running phase.

The arithmetic is the engine's (:mod:`prunestudio.core.run.estimate`); this module reads the
loaded model's sizes once per model (:func:`~prunestudio.core.model.speed.model_facts`) and this
machine's measured rate (:func:`~prunestudio.core.model.speed.machine_speed`: a quarter-second
probe the first time, then cached on disk), and turns both into the panels' words.
"""

from __future__ import annotations

import time
import weakref
from typing import Any, Sequence

from ..core.config import CalibConfig, PruneConfig
from ..core.events import PhaseProgress, PhaseStarted
from ..core.model import threads
from ..core.model.speed import MachineSpeed, ModelFacts, known_speed, machine_speed, model_facts
from ..core.run import estimate

_FACTS: dict[int, tuple[weakref.ref, ModelFacts]] = {}  # id(model) -> (a weak reference to it, its facts)


def facts_and_speed(loaded: Any) -> tuple[ModelFacts, MachineSpeed] | None:
    """The loaded model's sizes and this machine's rate for its device and dtype (None: no model)."""
    model = getattr(loaded, "model", None)
    if model is None:
        return None
    hit = _FACTS.get(id(model))
    if hit is None or hit[0]() is not model:
        _FACTS.clear()  # one model at a time (the reference is weak: the model is never kept alive here)
        try:
            hit = (weakref.ref(model), model_facts(model))
        except Exception:  # noqa: BLE001 - a model whose sizes cannot be read: no estimate
            return None
        _FACTS[id(model)] = hit
    facts = hit[1]
    # blocks left on disk (meta tensors) are computed on the CPU; "cpu:0" is the CPU too
    device = "cpu" if facts.device.startswith(("cpu", "meta")) else facts.device
    try:
        if threads.active() is not None:
            # a job computes now: no probe (it would measure the job and set torch's threads under
            # it); the rate measured before, if any
            speed = known_speed(device, facts.dtype, threads=_THREADS[0][1] if _THREADS and device == "cpu" else None)
        else:
            speed = machine_speed(device, facts.dtype, threads=_job_threads() if device == "cpu" else None)
    except Exception:  # noqa: BLE001 - a device or dtype the probe cannot use: no estimate
        return None
    return (facts, speed) if speed is not None else None


_THREADS: list[tuple[float, int]] = []  # (when, threads): the last choice, reused for a while
_THREADS_SECONDS = 30.0


def _job_threads() -> int:
    """The torch threads a job started now would use (:func:`~prunestudio.core.model.threads.choose_threads`:
    the setting, or the CPUs other processes leave free); measured at most every 30 s, since
    measuring the load takes a tenth of a second on the GUI thread."""
    now = time.monotonic()
    if not _THREADS or now - _THREADS[0][0] > _THREADS_SECONDS:
        _THREADS[:] = [(now, threads.choose_threads(threads.requested()).threads)]
    return _THREADS[0][1]


def _say(seconds: float) -> str:
    return estimate.about(seconds)


def selfgen_text(loaded: Any, cfg: CalibConfig | None) -> str:
    """"Generating: about 8 min on this machine" for a self-generated set; "" otherwise."""
    if cfg is None or not cfg.is_selfgen:
        return ""
    fs = facts_and_speed(loaded)
    if fs is None:
        return ""
    n = estimate.selfgen_samples(cfg)
    if cfg.protocol == "paper":  # samples end at end-of-text: how many is a guess
        return (f"Generating about {n} samples of varying length for {cfg.nsamples} windows: "
                f"{_say(estimate.selfgen(*fs, cfg).seconds)}.")
    return f"Generating {n} samples: {_say(estimate.selfgen(*fs, cfg).seconds)}."


def run_text(loaded: Any, cfg: PruneConfig | None, nsamples: int, seqlen: int,
             eval_tokens: int | None = None, eval_seqlen: int = 0, evaluations: int = 0) -> str:
    """The run: pruning, plus ``evaluations`` perplexity passes over ``eval_tokens`` tokens."""
    fs = facts_and_speed(loaded)
    if fs is None or cfg is None:
        return ""
    seconds = estimate.pruning(*fs, cfg, nsamples, seqlen).seconds
    what = "pruning"
    if evaluations and eval_tokens:
        seconds += evaluations * estimate.perplexity(*fs, eval_tokens, eval_seqlen).seconds
        what = "pruning and " + ("both evaluations" if evaluations > 1 else "one evaluation")
    return f"Run ({what}): {_say(seconds)}."


def ppl_text(loaded: Any, source: str | None, seqlen: int, max_windows: int | None) -> str:
    """One perplexity evaluation with these settings."""
    if not source:
        return ""
    fs = facts_and_speed(loaded)
    if fs is None:
        return ""
    tokens = estimate.eval_tokens(source, seqlen, max_windows)
    if tokens is None:
        return "Each evaluation: time unknown until the text is read (set Max windows for an estimate)."
    return f"Each evaluation: {_say(estimate.perplexity(*fs, tokens, seqlen).seconds)}."


def zeroshot_text(loaded: Any, tasks: Sequence[str], limit: int | None) -> str:
    """The ticked zero-shot tasks with at most ``limit`` questions each."""
    if not tasks:
        return ""
    fs = facts_and_speed(loaded)
    if fs is None:
        return ""
    return f"{len(tasks)} task{'s' if len(tasks) != 1 else ''}: {_say(estimate.zeroshot(*fs, tasks, limit).seconds)}."


class EtaTracker:
    """Elapsed time and ETA of the phases a job reports: feed it every event, read :meth:`text`."""

    def __init__(self) -> None:
        self.clock = estimate.PhaseClock()

    def text(self, ev: Any, now: float | None = None) -> str | None:
        """For a :class:`PhaseProgress`: "elapsed 12 s, about 3:10 min left"; None for other events."""
        now = time.perf_counter() if now is None else now
        if isinstance(ev, PhaseStarted):
            self.clock.start(ev.phase, now)
            return None
        if isinstance(ev, PhaseProgress):
            return self.clock.text(ev.phase, ev.share, now)
        return None
