"""The tables of ``bench/results/paper_seeds/FINDINGS.md`` from the grid's ``cells.csv``.

    python bench/paper_seeds_tables.py [--cells bench/results/paper_seeds/cells.csv]
        [--method wanda --setting 60%]

For one method and setting: each calibration source's perplexities (mean ± sample standard
deviation over its seeds, and each seed's), then every pair of sources paired by seed (each seed
draws every source's calibration set; the evaluation windows are the same for all): the mean ±
std of the per-seed change, the seeds where ``a`` was better, the paired t of the log ratios, its
two-sided p value, and the p value after Holm's correction for all the comparisons in the table
(sources pairs x two test sets). Markdown on stdout.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
METRICS = (("ppl_wikitext2", "WikiText-2"), ("ppl_c4", "C4"))


def p_two_sided(t: float, df: int) -> float | None:
    """Student's t two-sided p value (scipy, if installed; None otherwise)."""
    try:
        from scipy import stats
    except ImportError:
        return None
    return float(2 * stats.t.sf(abs(t), df)) if math.isfinite(t) else 0.0


def holm(ps: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p values (monotone, capped at 1), in the input order."""
    known = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    m, out, run = len(known), list(ps), 0.0
    for rank, (p, i) in enumerate(known):
        run = max(run, min(1.0, (m - rank) * p))
        out[i] = run
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", default=str(HERE / "results" / "paper_seeds" / "cells.csv"))
    ap.add_argument("--method", default="wanda")
    ap.add_argument("--setting", default="60%")
    a = ap.parse_args()

    by: dict[str, dict[int, dict[str, float]]] = {}
    for r in csv.DictReader(open(a.cells)):
        if r["method"] == a.method and r["setting"] == a.setting:
            by.setdefault(r["calibration"], {})[int(r["seed"])] = {m: float(r[m]) for m, _ in METRICS}
    sources = list(by)

    print("| calibration | seeds | " + " | ".join(f"{name} ppl, mean ± sd | per seed" for _, name in METRICS) + " |")
    print("|---|---|" + "---|---|" * len(METRICS))
    for s in sources:
        seeds = sorted(by[s])
        cells = []
        for m, _ in METRICS:
            v = [by[s][k][m] for k in seeds]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells += [f"{statistics.fmean(v):.1f} ± {sd:.1f}", " / ".join(f"{x:.1f}" for x in v)]
        print(f"| {s} | {len(seeds)} ({', '.join(map(str, seeds))}) | " + " | ".join(cells) + " |")

    rows, ps = [], []
    for x, y in itertools.combinations(sources, 2):
        seeds = sorted(set(by[x]) & set(by[y]))
        row = [x, y, str(len(seeds))]
        for m, _ in METRICS:
            logs = [math.log(by[x][k][m] / by[y][k][m]) for k in seeds]
            pct = [100 * (math.exp(v) - 1) for v in logs]
            sl = statistics.stdev(logs) if len(logs) > 1 else 0.0
            t = statistics.fmean(logs) / (sl / math.sqrt(len(logs))) if sl else float("inf")
            p = p_two_sided(t, len(logs) - 1) if len(logs) > 1 else None
            ps.append(p)
            row += [f"{statistics.fmean(pct):+.1f}% ± {statistics.stdev(pct) if len(pct) > 1 else 0:.1f}",
                    f"{sum(v < 0 for v in logs)}/{len(logs)}", f"{t:.1f}", p]
        rows.append(row)
    adj = holm(ps)
    fmt = (lambda p: "n/a" if p is None else f"{p:.3f}" if p >= 0.001 else f"{p:.0e}")
    print()
    print("| a | b | seeds | " + " | ".join(f"{name}: a vs b | a better | t | p | p (Holm)" for _, name in METRICS)
          + " |")
    print("|---|---|---|" + "---|---|---|---|---|" * len(METRICS))
    k = 0
    for row in rows:
        out = row[:3]
        for j in range(len(METRICS)):
            change, better, t, p = row[3 + 4 * j: 7 + 4 * j]
            h = adj[k]
            k += 1
            bold = h is not None and h < 0.05
            out += [change, better, t, fmt(p), f"**{fmt(h)}**" if bold else fmt(h)]
        print("| " + " | ".join(out) + " |")


if __name__ == "__main__":
    main()
