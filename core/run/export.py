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
    hub = (report.get("model") or {}).get("base_model")
    lines = [
        "---",
        *([f"base_model: {hub}"] if hub else []),
        "library_name: transformers",
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
    if cal.get("source"):
        lines += [
            f"Calibration: {cal.get('source')} — {cal.get('nsamples')} samples x {cal.get('seqlen')} tokens, "
            f"seed {cal.get('seed')}, token sha256 `{str(cal.get('sha256', ''))[:16]}…`.",
            "",
        ]
    else:
        lines += [f"Calibration: none ({report.get('method')} uses no calibration data).", ""]
    if ppl_d is not None or ppl_p is not None:
        lines += [perplexity_line(report), ""]
    for note in report.get("notes", []):
        lines += [f"Note: {note}", ""]
    part = report.get("model", {}).get("pruned_part")
    if part:  # a vision-language model: only its language model was pruned
        lines += [f"Pruned part: the {part}.", ""]
    lines += sample_lines(report)
    lines += [*speed_note(str(report.get("structure") or "")), "",
        "Load it with plain transformers: "
        f"`{report.get('model', {}).get('loads_with', 'AutoModelForCausalLM')}.from_pretrained(this_folder)`.",
        "The full recipe, per-module sparsity and timings are in `prunestudio.json`.",
        "",
    ]
    return "\n".join(lines)


def sample_lines(report: dict[str, Any]) -> list[str]:
    """The card's "Samples" section: each prompt with the dense and the pruned model's
    continuation, labelled, as the report's ``samples`` holds them; no section when none were
    generated."""
    samples = report.get("samples") or {}
    pairs = [p for p in samples.get("pairs") or [] if p.get("dense") is not None and p.get("pruned") is not None]
    if not pairs:
        return []
    lines = ["## Samples: dense and pruned", "",
             f"The same prompts continued by the model before and after pruning ({samples.get('decoding')}, "
             "the same settings and seed for both). Single samples show the kind of change, not its size: "
             "the perplexity above measures that.", ""]
    for i, p in enumerate(pairs, 1):
        lines += [f"**Prompt {i}:** {_quoted(p['prompt'])}", "",
                  "*Dense model:*", "", _fenced(p["prompt"] + p["dense"]), "",
                  "*Pruned model:*", "", _fenced(p["prompt"] + p["pruned"]), ""]
    return lines


def _quoted(text: str) -> str:
    return "`" + " ".join(text.split()).replace("`", "'") + "`"


def _fenced(text: str) -> str:
    """``text`` in a code fence longer than any run of backticks inside it."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def measured_on(ev: dict[str, Any]) -> str:
    """What a perplexity was measured on, in words: "wiki.test.raw, 32 windows of 512 tokens"."""
    n = ev.get("windows")
    windows = (f"{n} window{'s' if n != 1 else ''} of {ev.get('seqlen')} tokens" if isinstance(n, int)
               else f"windows of {ev.get('seqlen')} tokens")
    return f"{ev.get('ppl_source')}, {windows}"


def perplexity_line(report: dict[str, Any]) -> str:
    """The card's perplexity sentence: what it was measured on, dense, pruned and the change; a
    number that was not measured is said to be so (never "n/a")."""
    ppl_d, ppl_p = report.get("ppl_dense"), report.get("ppl_pruned")
    on = measured_on(report.get("eval") or {})
    if isinstance(ppl_d, (int, float)) and isinstance(ppl_p, (int, float)):
        return (f"Perplexity on {on}: dense {_fmt(ppl_d)}, pruned {_fmt(ppl_p)} "
                f"({(ppl_p / ppl_d - 1) * 100:+.1f} %; lower is better).")
    if isinstance(ppl_p, (int, float)):
        return f"Perplexity on {on}: pruned {_fmt(ppl_p)} (lower is better); the dense model was not measured."
    return f"Perplexity on {on}: dense {_fmt(ppl_d)}; the pruned model was not measured."


def speed_note(structure: str) -> list[str]:
    """What a user can expect of the zeros in today's runtimes: the same size and speed as the
    dense model unless a runtime exploits them, which the common ones do not."""
    nm = ":" in structure
    lines = [
        "## Size and speed: what to expect",
        "",
        "The pruned weights are stored as zeros in ordinary dense tensors. Zeros are not skipped by "
        "themselves: this folder is as large as the original model, and it needs the same memory and "
        "runs at the same speed wherever the runtime computes with dense matrices, which is what the "
        "common runtimes do:",
        "",
        "- **llama.cpp / Ollama**: a GGUF conversion stores the zeros as ordinary values; there is no "
        "speed-up or memory saving from sparsity.",
        "- **vLLM**: runs it as a dense model; its 2:4 sparse kernels were removed, so sparsity gives no "
        "speed-up there" + (", 2:4 included." if structure == "2:4" else "."),
        "- **TensorRT-LLM**: can build engines that use 2:4 sparse tensor cores (NVIDIA Ampere or newer), "
        "but users report about no end-to-end speed-up for language models"
        + ("; measure it before counting on it." if structure == "2:4"
           else (f"; a {structure} pattern other than 2:4 is not accelerated." if nm
                 else "; unstructured zeros are not accelerated.")),
        "- **PyTorch (transformers) on CPU or GPU**: dense kernels compute with the zeros like any other value; "
        "converting the weights to torch's sparse formats is generally not faster at these sparsity levels.",
        "",
        "**Smaller files.** Only a sparse storage format makes the files smaller: storing the non-zero "
        "values and a bitmask of one bit per weight takes about (1 − sparsity) + 1/16 of the size of "
        "16-bit weights (about 56 % at 50 % sparsity). This export does not use one, and a runtime expands "
        "such a format back to dense tensors to run it. A general compressor (zip, zstd) shrinks the "
        "download too, since zeros compress well, but not the memory the model needs.",
        "",
        "**What does help.** Quantization (4-bit GGUF for llama.cpp / Ollama, AWQ or GPTQ for vLLM) cuts "
        "memory and usually speeds up generation; structured pruning (removing whole heads, channels "
        "or layers) makes the matrices smaller in every runtime. The quality of this pruned model after "
        "quantization was not measured here.",
    ]
    return lines


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
