"""A complete headless run: load, calibrate, evaluate dense, prune, evaluate pruned, export.

The CLI and experiment grids call :func:`iter_job`; the GUI calls the same building blocks
(:func:`build_calibration`, :func:`iter_eval_ppl`, :func:`build_report`) step by step.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator

import torch

from .. import __version__
from ..calib.calibset import CalibrationSet
from ..calib.textsources import describe_source, split_field
from ..config import CalibConfig, Recipe
from ..errors import CalibrationError, ConfigError
from ..evaluate.perplexity import eval_ids, iter_perplexity
from ..events import Event, Message, PhaseDone, PhaseStarted
from ..model import architecture
from ..model.devices import slow_dtype_warning
from ..model.loading import LoadedModel, load_model
from ..prune.pipeline import PruneResult, iter_prune

StopFn = Callable[[], bool]


def _never() -> bool:
    return False


@dataclass
class JobResult:
    report: dict[str, Any]
    prune: PruneResult
    calibration: CalibrationSet | None
    export_dir: Path | None
    loaded: LoadedModel


def place_model(loaded: LoadedModel) -> None:
    """Put the whole model on the compute device when it is not the CPU (generation, evaluation)."""
    if loaded.device.type != "cpu":
        from ..model.offload import place_outside

        place_outside(loaded.model, loaded.device)  # a disk-offloaded model keeps its blocks on disk


def check_seqlen(loaded: LoadedModel, seqlen: int, what: str = "calibration") -> None:
    """Refuse a sequence length beyond the model's context window (``max_position_embeddings``)."""
    ctx = loaded.info.get("max_context")
    if ctx and seqlen > ctx:
        raise ConfigError(
            f"The {what} sequence length {seqlen} is longer than the {ctx} tokens {loaded.name} can "
            f"read at once (its max_position_embeddings); use {ctx} or less."
        )


def validate_recipe(loaded: LoadedModel, recipe: Recipe) -> None:
    """Settings that are only impossible for this model, checked before any long step."""
    cal, prune = recipe.calibration, recipe.prune
    if prune.needs_calibration:
        check_seqlen(loaded, cal.seqlen, "calibration")
    if recipe.eval_ppl:
        check_seqlen(loaded, recipe.eval_seqlen or cal.seqlen, "evaluation")
    lay = architecture.layout(loaded.model, prune.skip_modules)
    if prune.block_sparsity is not None and len(prune.block_sparsity) != len(lay.blocks):
        raise ConfigError(f"{len(prune.block_sparsity)} per-block sparsities given, "
                          f"{loaded.name} has {len(lay.blocks)} blocks.")
    n, m = prune.nm
    if n and m:
        bad = [f"{name} ({architecture.in_features(lay.blocks[0].get_submodule(name))})"
               for name in lay.module_names
               if architecture.in_features(lay.blocks[0].get_submodule(name)) % m]
        if bad:
            raise ConfigError(
                f"N:M structure {n}:{m} needs the input size of every pruned module to be a multiple "
                f"of {m}; not so for {', '.join(bad)}.",
                hint="Choose another M, or leave those modules dense (CLI: --skip NAME).",
            )


def build_calibration(loaded: LoadedModel, cal: CalibConfig,
                      should_stop: StopFn = _never) -> Generator[Event, None, CalibrationSet]:
    """Calibration set for ``cal``: self-generated, sampled from text, or a saved set."""
    check_seqlen(loaded, cal.seqlen, "calibration")
    if cal.is_selfgen:
        from ..calib.selfgen import GenerationSettings, iter_generate
        from ..calib.textsources import iter_texts

        settings = GenerationSettings(
            n=cal.nsamples if cal.drop_top == 0 else _n_before_filter(cal.nsamples, cal.drop_top),
            seqlen=cal.seqlen, prefix_tokens=cal.prefix_tokens, temperature=cal.temperature,
            top_p=cal.top_p, top_k=cal.top_k, repetition_penalty=cal.repetition_penalty,
            drop_top=cal.drop_top, seed=cal.seed)
        prefixes = iter_texts(cal.prefix_source) if cal.prefix_source else None
        place_model(loaded)
        cs = yield from iter_generate(loaded.model, loaded.tokenizer, settings, prefixes,
                                      should_stop=should_stop, source_name=cal.source)
        return cs
    from ..calib.sampling import sample_calibration

    t0 = time.perf_counter()
    yield PhaseStarted("calibrate", total=1)
    cs = sample_calibration(loaded.tokenizer, cal.source, cal.nsamples, cal.seqlen, cal.seed,
                            cal.mode, should_stop=should_stop)
    yield PhaseDone("calibrate", time.perf_counter() - t0)
    return cs


def _n_before_filter(n_keep: int, drop: float) -> int:
    """Generate enough that ``n_keep`` remain after dropping the ``drop`` fraction (floor)."""
    n = n_keep
    while n - int(n * drop) < n_keep:
        n += 1
    return n


def iter_eval_ppl(loaded: LoadedModel, source: str, seqlen: int, should_stop: StopFn = _never,
                  phase: str = "perplexity", max_windows: int | None = None,
                  batch_size: int = 4, data_dir: str | Path | None = None,
                  cache: bool = False) -> Generator[Event, None, float]:
    """Perplexity of ``loaded`` on ``source``. ``cache``: look the result up in, and add it to, the
    dense-perplexity cache (``core/evaluate/ppl_cache.py``), keyed by the weights themselves."""
    check_seqlen(loaded, seqlen, "evaluation")
    place_model(loaded)
    ids = eval_ids(loaded.tokenizer, source, seqlen, data_dir)
    key = None
    if cache:
        from ..evaluate import ppl_cache

        key = ppl_cache.dense_key(loaded.model, ids, seqlen, max_windows, batch_size, loaded.device)
        hit = ppl_cache.lookup(key)
        if hit is not None:
            yield Message(f"Perplexity of these weights on this text is known ({hit:.3f}); not evaluated again.")
            return hit
    ppl = yield from iter_perplexity(loaded.model, ids, seqlen, batch_size=batch_size,
                                     max_windows=max_windows, device=loaded.device,
                                     should_stop=should_stop, phase=phase)
    if cache:
        ppl_cache.store(key, ppl)
    return ppl


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


def build_report(loaded: LoadedModel, recipe: Recipe, calib: CalibrationSet | None,
                 result: PruneResult, ppl_dense: float | None, ppl_pruned: float | None,
                 seconds: dict[str, float], include_paths: bool = False) -> dict[str, Any]:
    prov = calib.provenance() if calib is not None else {
        "source": None, "nsamples": 0, "seqlen": 0, "seed": recipe.calibration.seed, "sha256": None}
    prov = dict(prov)
    if prov.get("source"):
        prov["source"] = public_source(str(prov["source"]), include_paths)
    if calib is not None:
        prov["stats"] = calib.stats()
    report: dict[str, Any] = {
        "format": "prunestudio-report",
        "version": 1,
        "model": {"name": loaded.name if include_paths or loaded.spec == "demo" else public_source(loaded.spec),
                  **{k: v for k, v in loaded.info.items() if k != "blocks_path"}},
        **result.to_dict(),
        "ppl_dense": ppl_dense,
        "ppl_pruned": ppl_pruned,
        "eval": {"ppl_source": ", ".join(public_source(s, include_paths) for s in recipe.eval_ppl) or None,
                 "seqlen": recipe.eval_seqlen or recipe.calibration.seqlen,
                 "max_windows": recipe.eval_max_windows},
        "calibration": prov,
        "recipe": recipe.to_dict(),
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "versions": versions(),
    }
    report["seconds"] = {**seconds, **result.seconds}
    if not include_paths:
        r = report["recipe"]
        r["model"] = report["model"]["name"] if loaded.spec != "demo" else "demo"
        r["calibration"]["source"] = public_source(r["calibration"]["source"])
        r["eval_ppl"] = [public_source(s) for s in r["eval_ppl"]]
        report = _scrub_paths(report, _private_paths(loaded, recipe, calib))
    return report


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


def iter_job(recipe: Recipe, out_dir: str | Path | None = None, overwrite: bool = False,
             should_stop: StopFn = _never, include_paths: bool = False,
             loaded: LoadedModel | None = None) -> Generator[Event, None, JobResult]:
    """The whole headless run, as events. Returns a :class:`JobResult`."""
    seconds: dict[str, float] = {}
    if loaded is None:
        t0 = time.perf_counter()
        yield PhaseStarted("load", total=1)
        loaded = load_model(recipe.model, recipe.device, recipe.dtype, recipe.trust_remote_code,
                            should_stop=should_stop, offload=recipe.prune.offload_mode,
                            offload_dir=recipe.prune.offload_dir)
        seconds["load"] = time.perf_counter() - t0
        yield PhaseDone("load", seconds["load"])
        yield Message(f"Loaded {loaded.name}: {loaded.info['blocks']} blocks, "
                      f"{loaded.info['parameters'] / 1e6:.1f}M parameters, on {loaded.device}")
        slow = slow_dtype_warning(loaded.device, loaded.dtype)
        if slow:
            yield Message(slow, "warning")
    validate_recipe(loaded, recipe)

    calib: CalibrationSet | None = None
    if recipe.prune.needs_calibration:
        t0 = time.perf_counter()
        calib = yield from build_calibration(loaded, recipe.calibration, should_stop)
        seconds["calibration"] = time.perf_counter() - t0
        if len(calib) == 0:
            raise CalibrationError("No calibration samples were produced.")

    eval_seqlen = recipe.eval_seqlen or recipe.calibration.seqlen
    ppl_dense = ppl_pruned = None
    if recipe.eval_ppl:
        t0 = time.perf_counter()
        ppl_dense = yield from iter_eval_ppl(loaded, recipe.eval_ppl[0], eval_seqlen, should_stop, "ppl-dense",
                                            recipe.eval_max_windows, cache=True)
        seconds["eval_dense"] = time.perf_counter() - t0
        yield Message(f"Dense perplexity: {ppl_dense:.3f}")

    ids = calib.input_ids() if calib is not None else None
    result = yield from iter_prune(loaded.model, ids, recipe.prune, loaded.device, should_stop)

    if recipe.eval_ppl:
        t0 = time.perf_counter()
        ppl_pruned = yield from iter_eval_ppl(loaded, recipe.eval_ppl[0], eval_seqlen, should_stop, "ppl-pruned",
                                             recipe.eval_max_windows)
        seconds["eval_pruned"] = time.perf_counter() - t0
        yield Message(f"Pruned perplexity: {ppl_pruned:.3f}")

    report = build_report(loaded, recipe, calib, result, ppl_dense, ppl_pruned, seconds, include_paths)
    export_dir = None
    if out_dir is not None:
        from .export import iter_export

        t0 = time.perf_counter()
        export_dir = yield from iter_export(loaded.model, loaded.tokenizer, out_dir, report, overwrite, should_stop)
        report["seconds"]["export"] = time.perf_counter() - t0
    return JobResult(report=report, prune=result, calibration=calib, export_dir=export_dir, loaded=loaded)
