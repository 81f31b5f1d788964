"""WikiText-2 perplexity of every pruning method on the default model, as a markdown table.

    python bench/methods_table.py [--nsamples 64 --seqlen 512 --eval-windows 0] [--out bench/results/methods.md]

Every cell is one run of the command line, exactly as a user would type it:

    prunestudio prune --model demo --method M --sparsity S [--structure 2:4] [--owl] [--two-pass]
        --calibration C4_FILE --nsamples N --seqlen L --eval-ppl wiki.test.raw [--eval-max-windows W]
        --report cell.json

C4 calibration (train shard 0, first 1,000 documents, ``../shared/data/c4``), WikiText-2 test
perplexity with the papers' convention. ``--eval-windows 0`` (the default) evaluates the whole test
set, which takes several minutes per cell on a CPU; the dense perplexity is evaluated once (the
CLI's dense-perplexity cache). Each cell's report is kept in ``--work``, so an interrupted table
resumes where it stopped; ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
C4 = DATA / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl.gz"
WIKI = DATA / "wikitext-2" / "wiki.test.raw"

# (row label, CLI flags)
METHODS = [
    ("magnitude", ["--method", "magnitude"]),
    ("wanda", ["--method", "wanda", "--two-pass"]),
    ("wanda, one pass", ["--method", "wanda", "--one-pass"]),
    ("sparsegpt", ["--method", "sparsegpt", "--one-pass"]),
    ("sparsegpt, two-pass", ["--method", "sparsegpt", "--two-pass"]),
    ("dsnot (Wanda init)", ["--method", "dsnot", "--dsnot-init", "wanda", "--two-pass"]),
    ("OWL + wanda", ["--method", "wanda", "--owl", "--two-pass"]),
    ("OWL + sparsegpt", ["--method", "sparsegpt", "--owl", "--one-pass"]),
]
SETTINGS = [("50%", ["--sparsity", "0.5"]), ("60%", ["--sparsity", "0.6"]),
            ("2:4", ["--sparsity", "0.5", "--structure", "2:4"])]


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("prunestudio")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "prunestudio.core.cli"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=0, help="0: the whole WikiText-2 test set")
    ap.add_argument("--rows", default="", help="row labels to run, separated by semicolons (default: all)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "methods.md"))
    ap.add_argument("--work", default=str(REPO / "bench" / ".work" / "methods"))
    ap.add_argument("--fresh", action="store_true", help="ignore the reports of earlier runs")
    ap.add_argument("--no-run", action="store_true", help="only assemble the table from the reports at hand")
    a = ap.parse_args()

    work = Path(a.work) / f"{a.nsamples}x{a.seqlen}-w{a.eval_windows}"
    work.mkdir(parents=True, exist_ok=True)
    wanted = {r.strip() for r in a.rows.split(";") if r.strip()}
    methods = [(label, flags) for label, flags in METHODS if not wanted or label in wanted]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cells: list[dict] = []
    rows: dict[str, dict[str, float]] = {}
    dense = None
    for label, mflags in methods:
        for name, sflags in SETTINGS:
            slug = "".join(c if c.isalnum() else "-" for c in f"{label}-{name}").strip("-")
            report_path = work / f"{slug}.json"
            if a.no_run and not report_path.exists():
                continue
            if a.fresh or not report_path.exists():
                cmd = _cli() + ["prune", "--model", "demo", "--device", "cpu", "--dtype", "fp32",
                                *mflags, *sflags, "--calibration", str(C4), "--nsamples", str(a.nsamples),
                                "--seqlen", str(a.seqlen), "--seed", "0", "--eval-ppl", str(WIKI),
                                "--report", str(report_path)]
                if a.eval_windows:
                    cmd += ["--eval-max-windows", str(a.eval_windows)]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.stderr.write(proc.stderr[-4000:])
                    print(f"{label:<36} {name:>4}: FAILED (exit {proc.returncode})", flush=True)
                    continue
                wall = time.perf_counter() - t0
            else:
                wall = None
            r = json.loads(report_path.read_text())
            dense = r.get("ppl_dense", dense)
            rows.setdefault(label, {})[name] = r["ppl_pruned"]
            secs = r.get("seconds", {})
            cells.append({"method": label, "setting": name, "ppl": r["ppl_pruned"],
                          "global_sparsity": r["global_sparsity"], "prune_seconds": secs.get("prune"),
                          "wall_seconds": wall, "cached": wall is None})
            print(f"{label:<36} {name:>4}: ppl {r['ppl_pruned']:9.2f}  sparsity {r['global_sparsity']:.4f}  "
                  f"prune {secs.get('prune', 0):.0f} s" + (" (earlier run)" if wall is None else f", {wall:.0f} s"),
                  flush=True)
    windows = a.eval_windows
    head = "| method | " + " | ".join(s[0] for s in SETTINGS) + " |"
    lines = [f"WikiText-2 test perplexity of the default model (dense: {dense:.2f}); C4 calibration "
             f"{a.nsamples} x {a.seqlen} tokens, seed 0; evaluation on "
             f"{'the whole test set' if not windows else f'the first {windows} windows of {a.seqlen} tokens'}; "
             "CPU, float32; each method in its default pass order (SparseGPT one pass per block, the "
             "others two, the reference order), plus the other order for Wanda and SparseGPT. Regenerate with `python bench/methods_table.py"
             + (f" --nsamples {a.nsamples}" if a.nsamples != 64 else "")
             + (f" --seqlen {a.seqlen}" if a.seqlen != 512 else "")
             + (f" --eval-windows {windows}" if windows else "") + "`.",
             "", head, "|---|" + "---|" * len(SETTINGS)]
    for label, vals in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{vals[s[0]]:.2f}" if s[0] in vals else "—"
                                                  for s in SETTINGS) + " |")
    Path(a.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(json.dumps({"dense": dense, "cells": cells}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
