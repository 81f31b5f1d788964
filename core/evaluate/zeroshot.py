"""Built-in zero-shot multiple-choice evaluation (ARC, PIQA, HellaSwag, WinoGrande, BoolQ, OBQA).

Each choice is scored by the log-likelihood of its continuation given its context, the way
lm-evaluation-harness does it for ``output_type: multiple_choice``:

* tokenisation and batching: :mod:`.loglikelihood`;
* ``acc`` is 1 when the choice with the highest summed log-likelihood is the gold one;
* ``acc_norm`` does the same after dividing each log-likelihood by the length of the choice
  text in characters (lm-eval's ``len(choice)``, without the ``" "`` delimiter). lm-eval
  reports only ``acc`` for WinoGrande and BoolQ; there ``acc_norm`` is set equal to ``acc``.

The choices of one question share their beginning, which runs once with its KV cache kept
(:func:`.loglikelihood.iter_loglikelihoods`). The work is a generator of :mod:`events` (``evaluate:<task>`` phases), checked for cancellation between
batches; :func:`evaluate_zeroshot` drains it.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Cancelled, EvaluationError
from ..events import Event, Message, run_to_completion
from .loglikelihood import (
    encode_pairs,
    iter_loglikelihoods,
    loglikelihoods,
    model_max_length,
)
from .task_data import ACC_ONLY_TASKS, TASKS, MCItem, load_task

__all__ = [
    "MCItem",
    "TaskResult",
    "TASKS",
    "load_task",
    "encode_pairs",
    "model_max_length",
    "loglikelihoods",
    "iter_loglikelihoods",
    "iter_evaluate_items",
    "score_items",
    "iter_zeroshot",
    "evaluate_zeroshot",
    "evaluate_with_lm_eval",
    "lm_eval_available",
]


@dataclass(frozen=True)
class TaskResult:
    """The score of one task. ``acc_norm`` equals ``acc`` for tasks lm-eval scores by acc only."""

    name: str
    acc: float
    acc_norm: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return {"acc": self.acc, "acc_norm": self.acc_norm, "n": self.n}


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _argmax(values: Sequence[float]) -> int:
    """Index of the first maximum (as numpy.argmax)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def score_items(
    items: Sequence[MCItem], lls: Sequence[Sequence[float]], acc_only: bool = False
) -> tuple[float, float]:
    """``(acc, acc_norm)`` from the per-choice log-likelihoods of each item."""
    if not items:
        return 0.0, 0.0
    hits = hits_norm = 0
    for item, ll in zip(items, lls, strict=True):
        hits += _argmax(ll) == item.gold
        normed = [v / max(n, 1) for v, n in zip(ll, item.norm_lengths, strict=True)]
        hits_norm += _argmax(normed) == item.gold
    acc = hits / len(items)
    return acc, (acc if acc_only else hits_norm / len(items))


def iter_evaluate_items(
    model: Any,
    tokenizer: Any,
    name: str,
    items: Sequence[MCItem],
    batch_size: int = 16,
    should_stop: Callable[[], bool] = lambda: False,
    acc_only: bool | None = None,
) -> Generator[Event, None, TaskResult]:
    """Score already-loaded questions as task ``name`` (phase ``evaluate:<name>``)."""
    if acc_only is None:
        acc_only = name in ACC_ONLY_TASKS
    requests = [(c, x) for item in items for c, x in zip(item.contexts, item.continuations)]
    # The choices of one question share their beginning: computed once (iter_loglikelihoods).
    groups = [k for k, item in enumerate(items) for _ in range(item.num_choices)]
    flat = yield from iter_loglikelihoods(
        model, tokenizer, requests, batch_size, should_stop, phase=f"evaluate:{name}", groups=groups
    )
    lls: list[list[float]] = []
    k = 0
    for item in items:
        lls.append(flat[k : k + item.num_choices])
        k += item.num_choices
    acc, acc_norm = score_items(items, lls, acc_only=acc_only)
    return TaskResult(name=name, acc=acc, acc_norm=acc_norm, n=len(items))


def _task_list(tasks: Sequence[str] | str) -> list[str]:
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    if not names:
        raise EvaluationError("No zero-shot task was chosen.")
    for name in names:
        if name not in TASKS:
            raise EvaluationError(f"Unknown zero-shot task '{name}'; the tasks are {', '.join(TASKS)}.")
    return list(dict.fromkeys(names))


def iter_zeroshot(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    data_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    should_stop: Callable[[], bool] = lambda: False,
    full: bool = False,
) -> Generator[Event, None, dict[str, TaskResult]]:
    """Evaluate ``model`` on zero-shot ``tasks`` (names from :data:`TASKS`); ``full``: the whole
    task sets, never a local subset file (:func:`~.task_data.load_task`).

    All task files are loaded first, so a missing one fails before any compute. Yields, per
    task, ``PhaseStarted("evaluate:<task>", total=batches)``, a ``PhaseProgress`` per batch and
    ``PhaseDone`` (and, without ``data_dir``, a ``Message`` before each hub download);
    returns ``{task: TaskResult}``.
    """
    names = _task_list(tasks)
    loaded: dict[str, list[MCItem]] = {}
    for name in names:
        if should_stop():
            raise Cancelled()
        if data_dir is None:
            yield Message(f"Fetching the {name} questions from the Hugging Face hub")
        loaded[name] = load_task(name, data_dir=data_dir, limit=limit, full=full)
    results: dict[str, TaskResult] = {}
    for name in names:
        results[name] = yield from iter_evaluate_items(
            model, tokenizer, name, loaded[name], batch_size, should_stop
        )
    return results


def evaluate_zeroshot(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    data_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, TaskResult]:
    """:func:`iter_zeroshot` without the events."""
    return run_to_completion(iter_zeroshot(model, tokenizer, tasks, data_dir, limit, batch_size, should_stop))


# --------------------------------------------------------------------------------------------
# Optional: the same tasks through lm-evaluation-harness itself
# --------------------------------------------------------------------------------------------


def lm_eval_available() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def evaluate_with_lm_eval(
    model: Any,
    tokenizer: Any,
    tasks: Iterable[str],
    limit: int | None = None,
    batch_size: int = 16,
) -> dict[str, TaskResult]:
    """Run ``tasks`` through ``lm_eval.simple_evaluate`` (when lm-eval is installed; it fetches
    its data from the hub) and map its results to :class:`TaskResult`."""
    names = _task_list(list(tasks))
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise EvaluationError(
            "lm-evaluation-harness is not installed.", hint="Install the lm-eval package to use it."
        ) from None
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = lm_eval.simple_evaluate(model=lm, tasks=names, limit=limit)
    except Exception as exc:
        raise EvaluationError(
            f"lm-evaluation-harness failed ({exc.__class__.__name__}).",
            details=traceback.format_exc(),
        ) from None
    if not out or "results" not in out:
        raise EvaluationError("lm-evaluation-harness returned no results.")
    results: dict[str, TaskResult] = {}
    for name in names:
        res = out["results"].get(name, {})
        acc = res.get("acc,none")
        if acc is None:
            raise EvaluationError(f"lm-evaluation-harness reported no accuracy for {name}.")
        acc_norm = res.get("acc_norm,none", acc)
        samples = out.get("n-samples", {}).get(name, {})
        n = samples.get("effective") or len(out.get("samples", {}).get(name, [])) or 0
        if not n and limit:
            n = limit
        results[name] = TaskResult(name=name, acc=float(acc), acc_norm=float(acc_norm), n=int(n))
    return results
