"""Writing a pruned model: safetensors, tokenizer, generation config, the source folder's other
files the model needs (chat template, ...), report and model card.

Everything is written into a temporary folder beside the destination and renamed into place at
the end, so a failure (disk full, unwritable folder, cancel) never leaves a half-written export
and never touches an existing destination unless the new export is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Generator

from ..errors import Cancelled, ExportError
from ..events import Event, PhaseDone, PhaseProgress, PhaseStarted
from ..prune.result import is_incomplete

REPORT_NAME = "prunestudio.json"


def model_card(report: dict[str, Any]) -> str:
    """A short, honest README for the exported folder."""
    cal = report.get("calibration", {})
    ppl_d, ppl_p = report.get("ppl_dense"), report.get("ppl_pruned")
    cov = report.get("coverage") or {}
    partial = bool(cov.get("partial"))
    lines = [
        "---",
        "tags: [pruned, prunestudio" + (", partially-pruned]" if partial else "]"),
        "---",
        f"# {report.get('model', {}).get('name', 'model')} "
        f"{'partly pruned' if partial else 'pruned'} with {report.get('method')}",
        "",
    ]
    if partial:
        lines += [f"**Partial pruning: only {cov.get('pruned_share', 0):.0%} of the decoder blocks' weights "
                  "were pruned; the rest stayed dense (see the note below).** The sparsity below is "
                  "that of the pruned modules, not of the model.", ""]
    lines += [
        f"Pruned with Prune Studio {report.get('versions', {}).get('prunestudio', '')}: "
        f"method **{report.get('method')}**, target sparsity **{report.get('sparsity_target')}**, "
        f"structure **{report.get('structure')}**; achieved {report.get('global_sparsity', 0):.4f} "
        "zeros over the pruned linear modules of the decoder blocks (embeddings and output head are dense).",
        "",
    ]
    if cov:
        lines += [_coverage_line(cov), ""]
    lines += [
        f"Calibration: {cal.get('source')} — {cal.get('nsamples')} samples x {cal.get('seqlen')} tokens, "
        f"seed {cal.get('seed')}, token sha256 `{str(cal.get('sha256', ''))[:16]}…`.",
        "",
    ]
    if ppl_d is not None or ppl_p is not None:
        lines += [f"Perplexity ({report.get('eval', {}).get('ppl_source', 'evaluation set')}, "
                  f"seqlen {report.get('eval', {}).get('seqlen')}): dense {_fmt(ppl_d)}, pruned {_fmt(ppl_p)}.", ""]
    for note in report.get("notes", []):
        lines += [f"Note: {note}", ""]
    part = report.get("model", {}).get("pruned_part")
    if part:  # a vision-language model: only its language model was pruned
        lines += [f"Pruned part: the {part}.", ""]
    lines += [
        "**About the file size.** Pruned weights are stored as explicit zeros in dense tensors: "
        "unstructured sparsity does not make these files smaller or the model faster by itself. "
        "A speed-up needs a sparse inference engine (or 2:4 sparse tensor cores for 2:4 models).",
        "",
        "Load it with plain transformers: "
        f"`{report.get('model', {}).get('loads_with', 'AutoModelForCausalLM')}.from_pretrained(this_folder)`.",
        "The full recipe, per-module sparsity and timings are in `prunestudio.json`.",
        "",
    ]
    return "\n".join(lines)


def _coverage_line(cov: dict[str, Any]) -> str:
    """What the pruned modules hold of the block weights, and what stayed dense by which rule."""
    dense = [f"{g['reason']}: {g['share']:.1%} of the block parameters"
             for g in cov.get("excluded", []) if g.get("parameters")]
    line = (f"Coverage: the pruned modules hold {cov.get('pruned_parameters', 0):,} of the "
            f"{cov.get('weight_parameters', 0):,} parameters in the decoder blocks' weight matrices "
            f"({cov.get('pruned_share', 0):.1%}).")
    return line + (" Left dense: " + "; ".join(dense) + "." if dense else "")


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "n/a"


def iter_export(
    model: Any,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    report: dict[str, Any],
    overwrite: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[Event, None, Path]:
    """Export atomically; yields progress; returns the final folder."""
    out = Path(out_dir).expanduser()
    if is_incomplete(model):
        raise ExportError("This model was only partly pruned (the run was cancelled or failed); "
                          "it cannot be exported. Run the pruning again.")
    if out.exists() and not overwrite:
        if not out.is_dir() or any(out.iterdir()):
            raise ExportError(f"{out} already exists and is not empty; choose another folder or allow overwriting.")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"Cannot create the folder {parent}: {e.strerror or e}.") from e
    if not os.access(parent, os.W_OK):
        raise ExportError(f"The folder {parent} is not writable.")

    t0 = time.perf_counter()
    yield PhaseStarted("export", total=4)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    except OSError as e:
        raise ExportError(f"Cannot write in {parent}: {e.strerror or e}.") from e
    try:
        if should_stop():
            raise Cancelled()
        yield PhaseProgress("export", 0, 4, "weights (safetensors)")
        gen_cfg = getattr(model, "generation_config", None)
        from ..model.offload import save_lazy_model, store_of

        if store_of(model) is not None:  # disk offload: blocks are streamed from their files
            save_lazy_model(model, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        if should_stop():
            raise Cancelled()
        yield PhaseProgress("export", 1, 4, "tokenizer")
        tokenizer.save_pretrained(tmp)
        if gen_cfg is not None and not (tmp / "generation_config.json").exists():
            gen_cfg.save_pretrained(tmp)
        _carry_source_files(model, tmp)
        yield PhaseProgress("export", 2, 4, "report and model card")
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2, default=_json_default) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(model_card(report), encoding="utf-8")
        if should_stop():
            raise Cancelled()
        yield PhaseProgress("export", 3, 4, "moving into place")
        _replace_dir(tmp, out)
    except Cancelled:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = "the disk is full" if getattr(e, "errno", None) == 28 else (e.strerror or str(e))
        raise ExportError(f"Export to {out} failed: {reason}. Nothing was written there.", details=repr(e)) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    yield PhaseProgress("export", 4, 4, "done")
    yield PhaseDone("export", time.perf_counter() - t0)
    return out


def _carry_source_files(model: Any, tmp: Path) -> None:
    """Copy from the folder the model was loaded from the files it needs that the export did not
    write itself (chat template, tokenizer files such as ``tokenizer.model``, processor settings,
    licence; its ``*.py`` only when remote code was trusted): see :mod:`..model.model_files`."""
    from ..model.model_files import source_of

    src = source_of(model)
    if src is None:
        return
    for rel in src.carried():
        dest = tmp / rel
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src.folder / rel, dest)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is swapped away first and removed after."""
    if not out.exists():
        os.replace(tmp, out)
        return
    backup = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, backup)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(backup, out)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    return str(o)
