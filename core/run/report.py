"""Every report the engine writes: a run's (:func:`build_report`), an experiment's dense baseline
(:func:`dense_report`) and a plain evaluation's (:func:`eval_report`), with their measurements
(:func:`add_perplexities`, :func:`suite_eval`, :func:`add_zeroshot`). Reports name sources by file
name, never by the user's local paths, unless ``include_paths`` asks for them."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from .. import __version__
from ..calib.calibset import CalibrationSet
from ..calib.textsources import describe_source, split_field
from ..config import Recipe
from ..model import catalog
from ..model.loading import _HUB_ID, LoadedModel
from ..model.threads import ThreadChoice
from ..prune.result import PruneResult
from .partial import run_coverage

if TYPE_CHECKING:
    from .evaluation import EvalSettings

FORMAT, VERSION = "prunestudio-report", 1


def versions() -> dict[str, str]:
    import transformers

    return {"prunestudio": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def public_source(source: str, include_paths: bool = False) -> str:
    """A source as written in reports: file names only, unless absolute paths are wanted."""
    if include_paths or source.startswith(("hf:", "selfgen")) or "/" not in source and "\\" not in source:
        if source.startswith("selfgen:") and not include_paths:
            return "selfgen:" + describe_source(source.split(":", 1)[1])
        return source
    return describe_source(source)


def _model_section(loaded: LoadedModel, name: str) -> dict[str, Any]:
    return {"name": name, **{k: v for k, v in loaded.info.items() if k != "blocks_path"}}


def output_error_summary(module_info: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The run's relative output errors (``core/prune/output_error.py``): their mean over the pruned
    modules, the largest and where; None when none was measured (no calibration data)."""
    errs = {k: float(v["output_error"]) for k, v in module_info.items()
            if isinstance(v, dict) and isinstance(v.get("output_error"), (int, float))}
    if not errs:
        return None
    worst = max(errs, key=errs.__getitem__)
    return {"mean": sum(errs.values()) / len(errs), "max": errs[worst], "max_module": worst,
            "modules": len(errs),
            "measured_on": "||(W - W_pruned) X|| / ||W X|| on up to 128 calibration token rows per module input"}


def build_report(loaded: LoadedModel, recipe: Recipe, calib: CalibrationSet | None,
                 result: PruneResult, ppl_dense: float | None, ppl_pruned: float | None,
                 seconds: dict[str, float], include_paths: bool = False,
                 evaluation: "EvalSettings | None" = None, windows: int | None = None,
                 threads: ThreadChoice | None = None) -> dict[str, Any]:
    """The report of one run. ``evaluation``: the settings ``ppl_dense`` / ``ppl_pruned`` were
    measured with, ``windows`` the number of windows they read; when a number was measured the
    report's ``eval`` section says what on (:func:`run_eval`), and there is no ``eval`` section
    otherwise. Nothing empty is written: ``module_info`` keeps the modules a method said something
    about, and ``owl`` and ``notes`` appear only when they hold something. ``model.base_model`` is
    the hub id the model comes from, when known (:func:`base_model`). ``coverage`` says what the
    run pruned of the block weights and what it left dense by which rule
    (``core/model/coverage.py``); a partial run's report also opens its ``notes`` with that fact.
    ``threads``: the torch threads the run used, asked for or chosen, the CPUs available and how
    many other processes kept busy (``core/model/threads.py``); left out when not known."""
    prov = calib.provenance() if calib is not None else {
        "source": None, "nsamples": 0, "seqlen": 0, "seed": recipe.calibration.seed, "sha256": None}
    prov = dict(prov)
    if prov.get("source"):
        prov["source"] = public_source(str(prov["source"]), include_paths)
    if calib is not None:
        prov["stats"] = calib.stats()
    measured = evaluation is not None and (ppl_dense is not None or ppl_pruned is not None)
    coverage = run_coverage(loaded.model, recipe.prune)
    report: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": _model_section(loaded, loaded.name if include_paths or loaded.spec == "demo"
                                else public_source(loaded.spec)),
        **result.to_dict(),
        "coverage": coverage.to_dict(),
        "ppl_dense": ppl_dense,
        "ppl_pruned": ppl_pruned,
        **({"eval": run_eval(evaluation, windows, include_paths)} if measured and evaluation is not None else {}),
        "calibration": prov,
        "recipe": recipe.to_dict(),
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).replace("torch.", ""),
        **({"threads": threads.to_dict()} if threads is not None else {}),
        "versions": versions(),
    }
    report["seconds"] = {**seconds, **result.seconds}
    err = output_error_summary(report.get("module_info") or {})
    if err:
        report["output_error"] = err
    if coverage.partial:  # said first, wherever the notes are shown
        report["notes"] = [coverage.note(), *report["notes"]]
    report["module_info"] = {k: v for k, v in report["module_info"].items() if v}
    for k in ("module_info", "owl", "notes"):
        if not report[k]:
            del report[k]
    if not include_paths:
        r = report["recipe"]
        r["model"] = report["model"]["name"] if loaded.spec != "demo" else "demo"
        r["calibration"]["source"] = public_source(r["calibration"]["source"])
        r["eval_ppl"] = [public_source(s) for s in r["eval_ppl"]]
        report = _scrub_paths(report, _private_paths(loaded, recipe, calib))
    hub = base_model(loaded)  # a public name, kept as it is (never scrubbed)
    if hub:
        report["model"]["base_model"] = hub
    return report


def run_eval(evaluation: "EvalSettings", windows: int | None, include_paths: bool = False) -> dict[str, Any]:
    """The ``eval`` section of a run's report: the text its perplexities were measured on (its
    public name), the window length, the number of windows read (left out when unknown) and the
    window limit asked for (left out when there was none)."""
    out: dict[str, Any] = {"ppl_source": public_source(evaluation.source, include_paths), "seqlen": evaluation.seqlen}
    if windows is not None:
        out["windows"] = windows
    if evaluation.max_windows is not None:
        out["max_windows"] = evaluation.max_windows
    return out


def base_model(loaded: LoadedModel) -> str | None:
    """The Hugging Face hub id ``loaded`` comes from, when it is known: the id it was loaded by,
    the hub id of a catalogue model, or, for a local folder, the ``_name_or_path`` its
    ``config.json`` records when that looks like a hub id (owner/name, not a path); else None."""
    def hub_like(s: Any) -> bool:
        return (isinstance(s, str) and bool(_HUB_ID.match(s)) and not s.startswith((".", "/", "~"))
                and not os.path.exists(os.path.expanduser(s)))

    if loaded.spec in catalog.CATALOG:
        hub = catalog.CATALOG[loaded.spec].hub_id
        return hub if hub_like(hub) else None
    if loaded.name == loaded.spec and hub_like(loaded.spec):  # loaded by its hub id
        return loaded.spec
    if loaded.path is None:
        return None
    try:
        with open(Path(loaded.path) / "config.json", encoding="utf-8") as f:
            recorded = json.load(f).get("_name_or_path")
    except (OSError, ValueError, AttributeError):  # no config (a GGUF file), or not a JSON object
        return None
    return recorded if hub_like(recorded) else None


def dense_report(loaded: LoadedModel, recipe: Recipe) -> dict[str, Any]:
    """The report of an unpruned model (an experiment's dense baseline), before its measurements."""
    return {
        "format": FORMAT, "version": VERSION,
        "model": _model_section(loaded, loaded.name),
        "method": "dense", "structure": "dense", "sparsity_target": 0.0, "global_sparsity": 0.0,
        "ppl_dense": None, "ppl_pruned": None,
        "calibration": {"source": None, "nsamples": 0, "seqlen": 0, "seed": None, "sha256": None},
        "recipe": {"model": recipe.model if recipe.model == "demo" else loaded.name, "dtype": recipe.dtype},
        "device": str(loaded.device), "dtype": str(loaded.dtype).replace("torch.", ""),
        "versions": versions(), "seconds": {},
    }


def eval_report(model_spec: str, seqlen: int) -> dict[str, Any]:
    """The report of ``prunestudio eval``, before its measurements."""
    return {"format": "prunestudio-eval", "model": public_source(model_spec), "seqlen": seqlen, "ppl": {},
            "versions": versions()}


def add_perplexities(report: dict[str, Any], ppl: Mapping[str, float],
                     windows: Mapping[str, int] | None = None) -> None:
    """Perplexity per set under ``ppl`` (and, given, the windows read per set under ``windows``);
    the first set's is also the report's ``ppl_pruned`` (the number tables of pruned models show)."""
    report["ppl"] = dict(ppl)
    if windows is not None:
        report["windows"] = dict(windows)
    if ppl:
        report["ppl_pruned"] = next(iter(ppl.values()))


def suite_eval(sources: Sequence[str], seqlen: int, max_windows: int | None, windows: Mapping[str, int],
               tasks: Sequence[str], limit: int | None) -> dict[str, Any]:
    """The ``eval`` section of a report measured on several sets (an experiment cell): the sets,
    the window length, the windows read per set, and, when there are any, the window limit, the
    zero-shot tasks and their item limit."""
    out: dict[str, Any] = {"ppl_sources": list(sources), "seqlen": seqlen, "windows": dict(windows)}
    if max_windows is not None:
        out["max_windows"] = max_windows
    if tasks:
        out["tasks"] = list(tasks)
        if limit is not None:
            out["limit"] = limit
    return out


def add_zeroshot(report: dict[str, Any], results: Mapping[str, Any]) -> None:
    """Zero-shot results (``TaskResult`` by task) and their mean accuracy (None without tasks)."""
    report["tasks"] = {k: v.to_dict() for k, v in results.items()}
    accs = [v.acc for v in results.values()]
    report["tasks_mean_acc"] = sum(accs) / len(accs) if accs else None


def _private_paths(loaded: LoadedModel, recipe: Recipe, calib: CalibrationSet | None) -> dict[str, str]:
    """The user's local paths a report could mention, each mapped to its last component."""
    cands = [loaded.spec, str(loaded.path or ""), str(getattr(loaded.tokenizer, "name_or_path", "") or ""),
             str(getattr(getattr(loaded.model, "config", None), "_name_or_path", "") or ""),
             recipe.calibration.source, calib.source if calib is not None else "", *recipe.eval_ppl]
    out: dict[str, str] = {}
    for c in cands:
        c = c.split(":", 1)[1] if c.startswith("selfgen:") else c
        c, _ = split_field(c)
        if not c or c.startswith("hf:") or ("/" not in c and "\\" not in c):
            continue
        full = os.path.expanduser(c)
        variants = {c, full, os.path.abspath(full)}
        try:
            variants.add(str(Path(full).resolve()))
        except OSError:  # pragma: no cover
            pass
        for v in variants:
            name = Path(v).name
            if len(v) > 1 and v != name:
                out[v.rstrip("/\\") or v] = name
    return out


def _scrub_paths(obj: Any, paths: dict[str, str]) -> Any:
    """``obj`` with every occurrence of a private path replaced by its file or folder name."""
    if not paths:
        return obj
    if isinstance(obj, str):
        for full in sorted(paths, key=len, reverse=True):
            if full in obj:
                obj = obj.replace(full, paths[full])
        return obj
    if isinstance(obj, dict):
        return {k: _scrub_paths(v, paths) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_scrub_paths(v, paths) for v in obj)
    return obj
