"""The results of an experiment grid: metrics per cell, mean and sample standard deviation over
seeds, and the files a run writes (summary.md, summary.csv, cells.csv, grid.resolved.json)."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from ..files import atomic_write_text
from .grid import DENSE, Cell, EvalSpec, GridSpec, setting_label


def cell_metrics(report: dict[str, Any], ev: EvalSpec) -> dict[str, float | None]:
    """The metrics of one finished cell: ``ppl:<suite>``, ``zeroshot`` (mean acc), ``acc:<task>``."""
    m: dict[str, float | None] = {}
    for s in ev.ppl:
        m[f"ppl:{s}"] = (report.get("ppl") or {}).get(s)
    if ev.tasks:
        tasks = report.get("tasks") or {}
        m["zeroshot"] = report.get("tasks_mean_acc")
        for t in ev.tasks:
            m[f"acc:{t}"] = (tasks.get(t) or {}).get("acc")
    return m


@dataclass
class SummaryRow:
    source: str
    method: str
    setting: str
    n: int
    mean: dict[str, float | None]
    std: dict[str, float | None]
    seeds: list[int | None]


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); the std of a single value is 0."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def collect(spec: GridSpec, hist: Any) -> list[tuple[Cell, dict[str, Any]]]:
    """(cell, report) for every finished cell of ``spec`` in the history, in grid order."""
    out = []
    for c in spec.cells():
        rows = hist.runs(c.key)
        rows = [r for r in rows if r.key == c.key]
        if rows:
            out.append((c, rows[-1].report))
    return out


def summarize(spec: GridSpec, finished: list[tuple[Cell, dict[str, Any]]]) -> list[SummaryRow]:
    groups: dict[tuple[str, str, str], list[tuple[Cell, dict[str, float | None]]]] = {}
    for cell, report in finished:
        groups.setdefault((cell.source_label, cell.method, cell.setting), []).append(
            (cell, cell_metrics(report, spec.eval)))
    rows = []
    for (src, method, setting), items in groups.items():
        names = list(items[0][1])
        mean, std = {}, {}
        for name in names:
            mean[name], std[name] = mean_std([m[name] for _, m in items])
        rows.append(SummaryRow(src, method, setting, len(items), mean, std, [c.seed for c, _ in items]))
    order = {s: i for i, s in enumerate([DENSE] + [setting_label(st, sp) for st, sp in spec.settings()])}
    morder = {m: i for i, m in enumerate([DENSE, *spec.methods])}
    sorder = {s: i for i, s in enumerate([DENSE] + [s.label for s in spec.sources])}
    rows.sort(key=lambda r: (morder.get(r.method, 99), order.get(r.setting, 99), sorder.get(r.source, 99)))
    return rows


def _metric_label(name: str, ev: EvalSpec) -> str:
    if name.startswith("ppl:"):
        suite = name[4:]
        return {"wikitext2": "WikiText-2 ppl", "c4": "C4 ppl"}.get(suite, f"{suite} ppl")
    if name == "zeroshot":
        return f"0-shot acc (mean of {len(ev.tasks)})"
    return name


def _fmt(mean: float | None, std: float | None, n: int, pct: bool) -> str:
    if mean is None:
        return "–"
    if pct:
        s = f"{100 * mean:.1f}"
        return s + (f" ± {100 * std:.1f}" if n > 1 and std is not None else "")
    s = f"{mean:.2f}"
    return s + (f" ± {std:.2f}" if n > 1 and std is not None else "")


def summary_markdown(spec: GridSpec, rows: list[SummaryRow]) -> str:
    main = [f"ppl:{s}" for s in spec.eval.ppl] + (["zeroshot"] if spec.eval.tasks else [])
    head = ["method", "setting", "calibration", "seeds"] + [_metric_label(m, spec.eval) for m in main]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.method, r.setting, r.source, str(r.n)]
        cells += [_fmt(r.mean.get(m), r.std.get(m), r.n, m == "zeroshot") for m in main]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_csv(spec: GridSpec, rows: list[SummaryRow]) -> str:
    names = [f"ppl:{s}" for s in spec.eval.ppl]
    if spec.eval.tasks:
        names += ["zeroshot"] + [f"acc:{t}" for t in spec.eval.tasks]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "setting", "calibration", "n_seeds"] +
               [f"{n}_{x}".replace(":", "_") for n in names for x in ("mean", "std")])
    for r in rows:
        w.writerow([r.method, r.setting, r.source, r.n] +
                   [_num(v) for n in names for v in (r.mean.get(n), r.std.get(n))])
    return buf.getvalue()


def cells_csv(spec: GridSpec, finished: list[tuple[Cell, dict[str, Any]]]) -> str:
    names = [f"ppl:{s}" for s in spec.eval.ppl]
    if spec.eval.tasks:
        names += ["zeroshot"] + [f"acc:{t}" for t in spec.eval.tasks]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["key", "method", "setting", "calibration", "seed", "global_sparsity", "calib_samples_kept",
                "seconds"] + [n.replace(":", "_") for n in names])
    for c, rep in finished:
        m = cell_metrics(rep, spec.eval)
        kept = (rep.get("calibration") or {}).get("nsamples")
        w.writerow([c.key[:16], c.method, c.setting, c.source_label, "" if c.seed is None else c.seed,
                    _num(rep.get("global_sparsity")), kept, _num((rep.get("seconds") or {}).get("cell"))] +
                   [_num(m.get(n)) for n in names])
    return buf.getvalue()


def _num(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_summary(spec: GridSpec, hist: Any, out_dir: str | Path) -> dict[str, Path]:
    """Write summary.md, summary.csv, cells.csv and grid.resolved.json for the finished cells of
    ``spec`` in ``hist`` (a :class:`~prunestudio.core.run.history.History`), each atomically; returns
    their paths by name. The plot of the results is drawn by the GUI package
    (``python -m prunestudio.gui.views.experiment_plot GRID OUT``): the engine never imports Qt."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    finished = collect(spec, hist)
    rows = summarize(spec, finished)
    total = len(spec.cells())
    md = (f"# {spec.name}\n\n{len(finished)} of {total} cells finished. Mean ± sample std over seeds; "
          f"perplexity on {spec.eval.seqlen}-token windows"
          + (f" (first {spec.eval.max_windows} windows of each set)" if spec.eval.max_windows else "")
          + (f"; zero-shot: {spec.eval.limit if spec.eval.limit else 'all'} items per task "
             f"({', '.join(spec.eval.tasks)})" if spec.eval.tasks else "") + ".\n\n"
          + summary_markdown(spec, rows))
    files = {"summary.md": out / "summary.md", "summary.csv": out / "summary.csv", "cells.csv": out / "cells.csv",
             "grid.resolved.json": out / "grid.resolved.json"}
    atomic_write_text(files["grid.resolved.json"], json.dumps(_spec_dict(spec), indent=2, default=str) + "\n")
    atomic_write_text(files["summary.md"], md)
    atomic_write_text(files["summary.csv"], summary_csv(spec, rows))
    atomic_write_text(files["cells.csv"], cells_csv(spec, finished))
    return files


def _spec_dict(spec: GridSpec) -> dict[str, Any]:
    d = asdict(spec)
    d.pop("base_dir")  # machine-specific; relative paths are relative to the grid file
    d["cells"] = [{"key": c.key, "description": c.describe()} for c in spec.cells()]
    return d
