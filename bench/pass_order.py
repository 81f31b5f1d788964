"""One pass per block or two: perplexity of both orders over several calibration draws.

    python bench/pass_order.py [--method wanda] [--owl] [--settings "50%;60%;2:4"] [--seeds 0,1,2,3]
                               [--nsamples 64 --seqlen 512 --eval-windows 40]

The default pass order of each method (``PruneConfig.passes_once``) is a quality decision: one
pass is faster, but scores later modules on inputs that already went through pruned ones. One
calibration draw is not enough to decide it (the difference between orders is of the size of
the difference between draws), so this script prunes with both orders on several draws of C4
windows (``--seed``) and prints, per setting, both perplexities and their ratio, then the mean
and the worst ratio over the draws.

Every cell is one ``prunestudio prune ... --one-pass|--two-pass --seed S --report cell.json``
run, exactly as a user would type it; reports are kept in ``--work`` so an interrupted run
resumes where it stopped. The last line is one JSON object with every cell and summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from methods_table import C4, SETTINGS, WIKI, _cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ORDERS = ("two", "one")


def run_cell(method: str, flags: list[str], order: str, seed: int, a: argparse.Namespace, report: Path) -> dict:
    if not report.exists():
        cmd = _cli() + ["prune", "--model", "demo", "--device", "cpu", "--dtype", "fp32", "--method", method,
                        *(["--owl"] if a.owl else []), *flags, f"--{order}-pass", "--calibration", str(C4),
                        "--nsamples", str(a.nsamples), "--seqlen", str(a.seqlen), "--seed", str(seed),
                        "--eval-ppl", str(WIKI), "--report", str(report)]
        if a.eval_windows:
            cmd += ["--eval-max-windows", str(a.eval_windows)]
        proc = subprocess.run(cmd, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)}\nfailed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(report.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="wanda")
    ap.add_argument("--owl", action="store_true", help="with OWL's outlier-weighted layer sparsities")
    ap.add_argument("--settings", default="50%;60%;2:4", help="from: " + "; ".join(s for s, _ in SETTINGS))
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=40, help="0: the whole WikiText-2 test set")
    ap.add_argument("--work", default=str(REPO / "bench" / ".work" / "pass_order"))
    ap.add_argument("--results", default="", help="also write the JSON summary to this file")
    a = ap.parse_args()

    settings = dict(SETTINGS)
    wanted = [s.strip() for s in a.settings.split(";") if s.strip()]
    unknown = [s for s in wanted if s not in settings]
    if unknown:
        ap.error(f"unknown setting(s) {unknown}; choose from {list(settings)}")
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    label = ("owl-" if a.owl else "") + a.method
    work = Path(a.work) / f"{label}-{a.nsamples}x{a.seqlen}-w{a.eval_windows}"
    work.mkdir(parents=True, exist_ok=True)

    cells, summary = [], {}
    for name in wanted:
        ratios = []
        for seed in seeds:
            ppl = {}
            for order in ORDERS:
                slug = "".join(c if c.isalnum() else "-" for c in name)
                r = run_cell(a.method, settings[name], order, seed, a, work / f"{slug}-{order}-s{seed}.json")
                ppl[order] = r["ppl_pruned"]
                cells.append({"setting": name, "seed": seed, "order": order, "ppl": r["ppl_pruned"],
                              "prune_seconds": r.get("seconds", {}).get("prune"), "ppl_dense": r.get("ppl_dense")})
            ratio = ppl["one"] / ppl["two"]
            ratios.append(ratio)
            print(f"{label} {name:>4} seed {seed}: two passes {ppl['two']:9.2f}  one pass {ppl['one']:9.2f}  "
                  f"one/two {ratio:.4f} ({(ratio - 1) * 100:+.1f}%)", flush=True)
        summary[name] = {"mean_ratio": statistics.fmean(ratios), "worst_ratio": max(ratios),
                         "best_ratio": min(ratios), "draws": len(ratios)}
        s = summary[name]
        print(f"{label} {name:>4}: one/two mean {s['mean_ratio']:.4f}, worst {s['worst_ratio']:.4f}, "
              f"best {s['best_ratio']:.4f} over {len(ratios)} draws", flush=True)
    out = {"method": a.method, "owl": a.owl, "nsamples": a.nsamples, "seqlen": a.seqlen,
           "eval_windows": a.eval_windows, "summary": summary, "cells": cells}
    if a.results:
        Path(a.results).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
