"""Prune Studio versus llm-compressor, side by side, on the same model, data and settings.

    python bench/vs_llmcompressor.py [--nsamples 64] [--seqlen 512] [--eval-windows 40]

What it does:

1. Builds the benchmark environment ``bench/.venv-llmc`` if it is missing: a separate virtualenv
   with ``llmcompressor`` and ``torch==2.13.0`` pinned (CPU wheel; llm-compressor pins its own
   transformers there). Nothing is installed into the project's environment.
2. Writes the calibration token windows once (``bench/.work/calib_<n>x<L>.json``: C4 train, seed 0,
   Prune Studio's sampler); both tools read that file.
3. For each of Wanda 50% and SparseGPT 50%, unstructured and 2:4: runs each tool in a fresh
   process on the demo model's safetensors folder (float32 on the CPU) and times it end to end,
   from the model in memory and the windows on hand to the pruned model in memory, ready to save
   (our ``iter_prune``; llm-compressor's ``oneshot`` with the sequential pipeline). Each pruned
   model's weights go to ``bench/.work``.
4. Evaluates both pruned models with the *same* code (ours): the sparsity of the decoder blocks'
   linear modules and WikiText-2 test perplexity (``../shared/data/wikitext-2/wiki.test.raw``,
   ``--eval-windows`` windows of ``--seqlen`` tokens).

llm-compressor is configured as our run: ``WandaPruningModifier`` / ``SparseGPTModifier`` with
``sparsity=0.5``, ``mask_structure`` "0:0" or "2:4", ``targets=["Linear"]``, ``ignore`` only the
output head (``re:.*lm_head``); SparseGPT ``block_size=128``, ``dampening_frac=0.01``; the
``sequential`` pipeline; no shuffling; the same batch size as ours (``--batch-size``, default 8).

Ours runs in each method's default order (``PruneConfig.passes_once``: one forward pass per block
for SparseGPT, see ``core/prune/lockstep.py``; two for Wanda, as the reference); llm-compressor's
sequential pipeline makes two (calibrate, then propagate). ``--one-pass`` / ``--two-pass`` force one
order for both methods.

The last line printed is one JSON object with the four ratios (ours / theirs) and every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / ".work"
VENV = HERE / ".venv-llmc"
LLMC_SPEC = "llmcompressor==0.14.0.1"
CONFIGS = [("wanda", "unstructured"), ("wanda", "2:4"), ("sparsegpt", "unstructured"), ("sparsegpt", "2:4")]
C4 = REPO.parent / "shared" / "data" / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl.gz"
WIKI = REPO.parent / "shared" / "data" / "wikitext-2" / "wiki.test.raw"


# ------------------------------------------------------------------------------------------------
# workers (each runs in its own process)
# ------------------------------------------------------------------------------------------------
def worker_ours(a: argparse.Namespace) -> dict:
    import torch
    from prunestudio.core.config import PruneConfig
    from prunestudio.core.events import run_to_completion
    from prunestudio.core.model.loading import load_model
    from prunestudio.core.prune.pipeline import iter_prune
    from safetensors.torch import save_file

    ids = torch.tensor(json.loads(Path(a.calib).read_text())["input_ids"], dtype=torch.long)
    t0 = time.perf_counter()
    loaded = load_model(a.model, "cpu", a.dtype)
    t_load = time.perf_counter() - t0
    cfg = PruneConfig(method=a.method, sparsity=0.5, structure=a.structure, batch_size=a.batch_size,
                      one_pass=a.one_pass)
    t0 = time.perf_counter()
    res = run_to_completion(iter_prune(loaded.model, ids, cfg, "cpu", previews=False))
    t_prune = time.perf_counter() - t0
    sd = {k: v.contiguous() for k, v in loaded.model.state_dict().items() if ".layers." in k}
    save_file(sd, a.out)
    return {"seconds": t_prune, "load_seconds": t_load, "phases": res.seconds}


def worker_llmc(a: argparse.Namespace) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.obcq import SparseGPTModifier
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    ids = json.loads(Path(a.calib).read_text())["input_ids"]
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dt)
    t_load = time.perf_counter() - t0
    ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
    mask = "0:0" if a.structure == "unstructured" else a.structure
    common = dict(sparsity=0.5, mask_structure=mask, targets=["Linear"], ignore=["re:.*lm_head"])
    if a.method == "wanda":
        recipe = WandaPruningModifier(**common)
    else:
        recipe = SparseGPTModifier(block_size=128, dampening_frac=0.01, **common)
    t0 = time.perf_counter()
    oneshot(model=model, dataset=ds, recipe=recipe, pipeline="sequential",
            num_calibration_samples=len(ids), max_seq_length=len(ids[0]),
            shuffle_calibration_samples=False, batch_size=a.batch_size)
    t_prune = time.perf_counter() - t0
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items() if ".layers." in k}
    save_file(sd, a.out)
    import llmcompressor

    return {"seconds": t_prune, "load_seconds": t_load, "version": llmcompressor.__version__}


def worker_eval(a: argparse.Namespace) -> dict:
    """Our evaluation, for any pruned weights file: block sparsity and WikiText-2 perplexity."""
    from prunestudio.core.evaluate.perplexity import eval_text, iter_perplexity, tokenize_eval
    from prunestudio.core.events import run_to_completion
    from prunestudio.core.model import architecture
    from prunestudio.core.model.loading import load_model
    from safetensors.torch import load_file

    loaded = load_model(a.model, "cpu", "fp32")
    if a.weights:
        sd = load_file(a.weights)
        missing, unexpected = loaded.model.load_state_dict(sd, strict=False)
        assert not unexpected, unexpected
    lay = architecture.layout(loaded.model)
    zeros = total = 0
    for block in lay.blocks:
        for name in lay.module_names:
            w = block.get_submodule(name).weight
            zeros += int((w == 0).sum())
            total += w.numel()
    ids = tokenize_eval(loaded.tokenizer, eval_text(str(WIKI)))
    ppl = run_to_completion(iter_perplexity(loaded.model, ids, a.seqlen, batch_size=4,
                                            max_windows=a.eval_windows or None))
    return {"sparsity": zeros / total, "ppl": ppl}


def add_order_flags(ap: argparse.ArgumentParser) -> None:
    """``--one-pass`` / ``--two-pass`` (``PruneConfig.one_pass``; neither: each method's default)."""
    order = ap.add_mutually_exclusive_group()
    order.add_argument("--one-pass", dest="one_pass", action="store_true", default=None,
                       help="ours with one pass per block (default: each method's default order)")
    order.add_argument("--two-pass", dest="one_pass", action="store_false",
                       help="ours in the reference two-pass order")


def order_flags(one_pass: bool | None) -> list[str]:
    """The flags that pass ``one_pass`` on to a worker process."""
    return [] if one_pass is None else (["--one-pass"] if one_pass else ["--two-pass"])


# ------------------------------------------------------------------------------------------------
# orchestration
# ------------------------------------------------------------------------------------------------
def _run(python: str, args: list[str], env: dict | None = None) -> dict:
    cmd = [python, str(Path(__file__).resolve())] + args
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"{' '.join(args[:2])} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ensure_llmc_env() -> tuple[str | None, str | None]:
    """(python of the benchmark venv, None) or (None, why it could not be made)."""
    py = VENV / "bin" / "python"
    if py.exists():
        ok = subprocess.run([str(py), "-c", "import llmcompressor, torch; print(torch.__version__)"],
                            capture_output=True, text=True)
        if ok.returncode == 0:
            return str(py), None
    steps = [[sys.executable, "-m", "venv", str(VENV)],
             [str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"],
             # torch pinned: any other torch request would pull a multi-GB CUDA build
             [str(py), "-m", "pip", "install", "-q", "torch==2.13.0", LLMC_SPEC, "-c", str(_constraints())]]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
            return None, f"could not build {VENV.name} ({' '.join(cmd[-3:])}): {tail}"
    return str(py), None


def _constraints() -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    p = WORK / "llmc-constraints.txt"
    p.write_text("torch==2.13.0\n")
    return p


def write_calibration(model_dir: str, nsamples: int, seqlen: int) -> Path:
    from prunestudio.core.calib.sampling import sample_calibration
    from prunestudio.core.model.loading import load_model

    WORK.mkdir(parents=True, exist_ok=True)
    p = WORK / f"calib_{nsamples}x{seqlen}.json"
    if not p.exists():
        loaded = load_model(model_dir, "cpu", "fp32")
        cs = sample_calibration(loaded.tokenizer, str(C4), nsamples, seqlen, seed=0)
        p.write_text(json.dumps({"source": C4.name, "seed": 0, "sha256": cs.sha256(),
                                 "input_ids": cs.input_ids().tolist()}))
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", choices=["ours", "llmc", "eval"])
    ap.add_argument("--model", default=None)
    ap.add_argument("--method", default="wanda")
    ap.add_argument("--structure", default="unstructured")
    ap.add_argument("--calib", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    add_order_flags(ap)
    ap.add_argument("--eval-windows", type=int, default=40, help="WikiText-2 windows (0: all)")
    ap.add_argument("--configs", default="all", help="comma list like wanda:unstructured,sparsegpt:2:4")
    ap.add_argument("--results", default=str(HERE / "results" / "vs_llmcompressor.json"))
    ap.add_argument("--reeval", action="store_true",
                    help="re-evaluate the weights of the last run (--results) on --eval-windows windows, "
                         "keeping its timings: a steadier perplexity ratio without pruning again")
    a = ap.parse_args()
    if a.worker:
        fn = {"ours": worker_ours, "llmc": worker_llmc, "eval": worker_eval}[a.worker]
        print(json.dumps(fn(a)))
        return
    if a.reeval:
        reevaluate(a)
        return

    os.environ.setdefault("PRUNESTUDIO_CACHE", "/tmp/pscache")
    from prunestudio.core.model.demo import ensure_demo_model

    model_dir = str(ensure_demo_model())
    calib = write_calibration(model_dir, a.nsamples, a.seqlen)
    configs = CONFIGS if a.configs == "all" else [tuple(c.split(":", 1)) for c in a.configs.split(",")]
    llmc_py, why = ensure_llmc_env()
    out: dict = {"model": "SmolLM2-135M-Instruct (demo, safetensors, fp32)", "nsamples": a.nsamples,
                 "seqlen": a.seqlen, "batch_size": a.batch_size, "eval_windows": a.eval_windows,
                 "calibration": calib.name, "llmcompressor_error": why, "runs": {}}
    if why:
        print(f"llm-compressor unavailable: {why}")
    out["ours_order"] = {True: "one-pass", False: "two-pass"}.get(a.one_pass, "method default")
    common = ["--model", model_dir, "--calib", str(calib), "--dtype", a.dtype,
              "--batch-size", str(a.batch_size)] + order_flags(a.one_pass)
    ev = ["--model", model_dir, "--seqlen", str(a.seqlen), "--eval-windows", str(a.eval_windows)]
    dense = _run(sys.executable, ["--worker", "eval"] + ev)
    out["dense"] = dense
    print(f"dense: ppl {dense['ppl']:.3f}")
    for method, structure in configs:
        key = f"{method}:{structure}"
        tag = f"{method}-{structure.replace(':', 'of')}"
        row: dict = {}
        for tool, py in (("ours", sys.executable), ("llmc", llmc_py)):
            if py is None:
                continue
            wfile = WORK / f"{tool}-{tag}.safetensors"
            load = os.getloadavg()[0]
            try:
                r = _run(py, ["--worker", tool, "--method", method, "--structure", structure,
                              "--out", str(wfile)] + common)
            except RuntimeError as e:
                print(f"{key} {tool}: {e}")
                row[tool] = {"error": str(e)[-2000:]}
                continue
            r["loadavg_before"] = load
            r.update(_run(sys.executable, ["--worker", "eval", "--weights", str(wfile)] + ev))
            row[tool] = r
            print(f"{key:24s} {tool:5s} {r['seconds']:8.1f} s  sparsity {r['sparsity']:.4f}  "
                  f"ppl {r['ppl']:.3f}  (load avg {load:.1f})", flush=True)
        if "seconds" in row.get("ours", {}) and "seconds" in row.get("llmc", {}):
            row["time_ratio"] = row["ours"]["seconds"] / row["llmc"]["seconds"]
            row["ppl_ratio"] = row["ours"]["ppl"] / row["llmc"]["ppl"]
            print(f"{key:24s} time ratio {row['time_ratio']:.3f}  ppl ratio {row['ppl_ratio']:.4f}", flush=True)
        out["runs"][key] = row
        Path(a.results).parent.mkdir(parents=True, exist_ok=True)  # partial results survive a stop
        Path(a.results).write_text(json.dumps(out, indent=2) + "\n")

    finish(out, a.results, why)


def reevaluate(a: argparse.Namespace) -> None:
    os.environ.setdefault("PRUNESTUDIO_CACHE", "/tmp/pscache")
    from prunestudio.core.model.demo import ensure_demo_model

    out = json.loads(Path(a.results).read_text())
    ev = ["--model", str(ensure_demo_model()), "--seqlen", str(out["seqlen"]), "--eval-windows", str(a.eval_windows)]
    out["dense"] = _run(sys.executable, ["--worker", "eval"] + ev)
    out["eval_windows"] = a.eval_windows
    print(f"dense: ppl {out['dense']['ppl']:.3f} ({a.eval_windows or 'all'} windows)")
    for key, row in out["runs"].items():
        method, structure = key.split(":", 1)
        tag = f"{method}-{structure.replace(':', 'of')}"
        for tool in ("ours", "llmc"):
            if "seconds" in row.get(tool, {}):
                row[tool].update(_run(sys.executable, ["--worker", "eval", "--weights",
                                                       str(WORK / f"{tool}-{tag}.safetensors")] + ev))
                print(f"{key:24s} {tool:5s} ppl {row[tool]['ppl']:.3f}", flush=True)
        if "seconds" in row.get("ours", {}) and "seconds" in row.get("llmc", {}):
            row["ppl_ratio"] = row["ours"]["ppl"] / row["llmc"]["ppl"]
            print(f"{key:24s} time ratio {row['time_ratio']:.3f}  ppl ratio {row['ppl_ratio']:.4f}", flush=True)
    finish(out, a.results, out.get("llmcompressor_error"))


def finish(out: dict, results: str, why: str | None) -> None:
    def ratio(method: str, what: str) -> float | None:
        vals = [r[what] for k, r in out["runs"].items() if k.startswith(method + ":") and what in r]
        return max(vals) if vals else None  # the worse of unstructured and 2:4

    summary = {
        "wanda_time_ratio": ratio("wanda", "time_ratio"),
        "sparsegpt_time_ratio": ratio("sparsegpt", "time_ratio"),
        "wanda_ppl_ratio": ratio("wanda", "ppl_ratio"),
        "sparsegpt_ppl_ratio": ratio("sparsegpt", "ppl_ratio"),
        "per_config": {k: {"time_ratio": r.get("time_ratio"), "ppl_ratio": r.get("ppl_ratio")}
                       for k, r in out["runs"].items()},
        "llmcompressor_error": why,
    }
    out["summary"] = summary
    Path(results).parent.mkdir(parents=True, exist_ok=True)
    Path(results).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
