"""WikiText-2 perplexity of every pruning method on the default model, as a markdown table.

    python bench/methods_table.py [--nsamples 64 --seqlen 512 --eval-windows 0] [--out bench/results/methods.md]

Each cell is the same headless job as ``prunestudio prune --model demo --method M --sparsity S
[--structure 2:4] [--owl] --calibration C4 --nsamples N --seqlen L --eval-ppl wiki.test.raw``:
C4 calibration (train shard 0, first 1,000 documents), WikiText-2 test perplexity with the papers'
convention. ``--eval-windows 0`` evaluates the whole test set (slow on a CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

METHODS = [("magnitude", {}), ("wanda", {}), ("sparsegpt", {}), ("dsnot", {"dsnot_init": "wanda"}),
           ("wanda", {"owl": True}), ("sparsegpt", {"owl": True})]
SETTINGS = [("50%", 0.5, "unstructured"), ("60%", 0.6, "unstructured"), ("2:4", 0.5, "2:4")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=0, help="0: the whole WikiText-2 test set")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "methods.md"))
    a = ap.parse_args()

    from prunestudio.core.cli import _quiet_libraries
    from prunestudio.core.config import CalibConfig, PruneConfig, Recipe
    from prunestudio.core.job import iter_eval_ppl, iter_job
    from prunestudio.core.models import load_model
    from prunestudio.core.pipeline import run_to_completion

    _quiet_libraries()
    c4 = str(DATA / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl.gz")
    wiki = str(DATA / "wikitext-2" / "wiki.test.raw")
    windows = a.eval_windows or None
    dense = run_to_completion(iter_eval_ppl(load_model("demo", "cpu", "fp32"), wiki, a.seqlen, max_windows=windows))
    rows: dict[str, dict[str, float]] = {}
    results = []
    for method, extra in METHODS:
        label = ("OWL + " if extra.get("owl") else "") + method + (" (Wanda init)" if method == "dsnot" else "")
        for name, sparsity, structure in SETTINGS:
            recipe = Recipe(model="demo", device="cpu", dtype="fp32",
                            prune=PruneConfig(method=method, sparsity=sparsity, structure=structure, **extra),
                            calibration=CalibConfig(source=c4, nsamples=a.nsamples, seqlen=a.seqlen),
                            eval_ppl=(wiki,), eval_max_windows=windows)
            t0 = time.perf_counter()
            res = run_to_completion(iter_job(recipe))
            ppl = res.report["ppl_pruned"]
            rows.setdefault(label, {})[name] = ppl
            results.append({"method": label, "setting": name, "ppl": ppl, "seconds": time.perf_counter() - t0,
                            "global_sparsity": res.report["global_sparsity"]})
            print(f"{label:<24} {name:>4}: ppl {ppl:9.2f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    head = "| method | " + " | ".join(s[0] for s in SETTINGS) + " |"
    lines = [f"WikiText-2 perplexity of the default model (dense: {dense:.2f}); C4 calibration "
             f"{a.nsamples} x {a.seqlen} tokens, seed 0; evaluation on "
             f"{'the whole test set' if not windows else f'the first {windows} windows of {a.seqlen} tokens'}.",
             "", head, "|---|" + "---|" * len(SETTINGS)]
    for label, vals in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{vals[s[0]]:.2f}" for s in SETTINGS) + " |")
    Path(a.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(json.dumps({"dense": dense, "cells": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
