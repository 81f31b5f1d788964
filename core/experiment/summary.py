"""The results of an experiment grid: metrics per cell, mean and sample standard deviation over
seeds, paired comparisons of the calibration sources across seeds, and the files a run writes
(summary.md, summary.csv, cells.csv, paired.csv, grid.resolved.json)."""

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


# Two-sided 95% critical values of Student's t by degrees of freedom (any statistics table); from
# 30 on the normal value is close enough.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
         18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042}


def t_critical(df: int) -> float:
    """The two-sided 95% critical value of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("a paired t needs at least two pairs")
    if df in _T975:
        return _T975[df]
    below = max(k for k in _T975 if k <= df)
    return _T975[below] if df < 30 else 1.96


@dataclass
class PairedRow:
    """Source ``a`` against source ``b`` for one method, setting and metric, paired by seed.

    ``ratios``: a / b per seed both have (for perplexity below 1 means ``a`` is better; for
    accuracy above 1); ``mean_pct`` and ``std_pct``: their mean and sample std as a percentage change;
    ``wins``: seeds where ``a`` was better; ``t``: the paired t statistic of the log ratios
    (the seeds draw the calibration samples, the evaluation is the same for both, so each seed is
    one pair); ``beyond_noise``: |t| above the two-sided 95% critical value (needs 2+ pairs)."""

    method: str
    setting: str
    metric: str
    a: str
    b: str
    seeds: list[int | None]
    ratios: list[float]
    mean_pct: float
    std_pct: float
    wins: int
    t: float | None
    beyond_noise: bool | None


def _is_selfgen(src: Any) -> bool:
    return src.source == "selfgen" or src.source.startswith("selfgen:")


def source_pairs(spec: GridSpec) -> list[tuple[str, str]]:
    """The pairs of calibration sources the paired comparison reports: every self-generated source
    against every other source (the question of Ji et al.), or, in a grid without self-generation,
    every pair in grid order."""
    srcs = list(spec.sources)
    gen = [s for s in srcs if _is_selfgen(s)]
    if not gen:
        return [(a.label, b.label) for i, a in enumerate(srcs) for b in srcs[i + 1:]]
    out: list[tuple[str, str]] = []
    for g in gen:
        for o in srcs:
            if o.label != g.label and (o.label, g.label) not in out:
                out.append((g.label, o.label))
    return out


def paired(spec: GridSpec, finished: list[tuple[Cell, dict[str, Any]]]) -> list[PairedRow]:
    """Paired comparisons across seeds of :func:`source_pairs` for every method, setting and metric
    with at least one seed where both sources finished."""
    by: dict[tuple[str, str, str], dict[int | None, dict[str, float | None]]] = {}
    for cell, report in finished:
        if cell.kind == DENSE:
            continue
        by.setdefault((cell.method, cell.setting, cell.source_label), {})[cell.seed] = cell_metrics(report, spec.eval)
    names = [f"ppl:{s}" for s in spec.eval.ppl] + (["zeroshot"] if spec.eval.tasks else [])
    settings = [setting_label(st, sp) for st, sp in spec.settings()]
    rows: list[PairedRow] = []
    for method in spec.methods:
        for setting in settings:
            for a, b in source_pairs(spec):
                ma, mb = by.get((method, setting, a), {}), by.get((method, setting, b), {})
                for name in names:
                    seeds = [sd for sd in ma if sd in mb and ma[sd].get(name) and mb[sd].get(name)]
                    if not seeds:
                        continue
                    ratios = [float(ma[sd][name]) / float(mb[sd][name]) for sd in seeds]  # type: ignore[arg-type]
                    logs = [math.log(r) for r in ratios]
                    lower_better = name.startswith("ppl:")
                    wins = sum(1 for r in ratios if (r < 1 if lower_better else r > 1))
                    mean_pct, std_pct = mean_std([100 * (r - 1) for r in ratios])
                    t = beyond = None
                    if len(logs) > 1:
                        sd_log = statistics.stdev(logs)
                        mean_log = statistics.fmean(logs)
                        t = math.inf if sd_log == 0 and mean_log != 0 else (
                            0.0 if sd_log == 0 else mean_log / (sd_log / math.sqrt(len(logs))))
                        beyond = abs(t) > t_critical(len(logs) - 1)
                    rows.append(PairedRow(method, setting, name, a, b, list(seeds), ratios,
                                          float(mean_pct or 0.0), float(std_pct or 0.0), wins, t, beyond))
    return rows


def paired_markdown(spec: GridSpec, rows: list[PairedRow]) -> str:
    """The paired comparisons as a table: change of ``a`` against ``b`` (mean ± std over seeds)."""
    if not rows:
        return ""
    lines = ["| method | setting | metric | source a | against b | seeds | a vs b (mean ± std) | a better | t | beyond seed noise |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = "–" if r.t is None else ("inf" if math.isinf(r.t) else f"{r.t:.2f}")
        verdict = "–" if r.beyond_noise is None else ("**yes**" if r.beyond_noise else "no")
        spread = f" ± {r.std_pct:.1f}%" if len(r.seeds) > 1 else ""
        lines.append(f"| {r.method} | {r.setting} | {_metric_label(r.metric, spec.eval)} | {r.a} | {r.b} | "
                     f"{len(r.seeds)} | {r.mean_pct:+.1f}%{spread} | {r.wins}/{len(r.seeds)} | {t} | {verdict} |")
    return "\n".join(lines) + "\n"


def paired_csv(spec: GridSpec, rows: list[PairedRow]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "setting", "metric", "a", "b", "n_seeds", "seeds", "ratios", "mean_pct", "std_pct",
                "a_better", "t", "beyond_seed_noise"])
    for r in rows:
        w.writerow([r.method, r.setting, r.metric, r.a, r.b, len(r.seeds), " ".join(str(s) for s in r.seeds),
                    " ".join(f"{x:.6g}" for x in r.ratios), _num(r.mean_pct), _num(r.std_pct), r.wins,
                    _num(r.t), "" if r.beyond_noise is None else str(r.beyond_noise).lower()])
    return buf.getvalue()


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
    pairs = paired(spec, finished)
    if pairs:
        md += ("\n## Paired comparisons across seeds\n\nEach seed draws one calibration set per source and "
               "every pruned model is evaluated on the same windows, so a seed pairs the sources. `a vs b`: "
               "the change of the metric with `a`'s calibration against `b`'s (mean ± sample std of the "
               "per-seed ratios, in percent); `a better`: seeds where it was better; `t`: the paired t "
               "statistic of the log ratios; `beyond seed noise`: |t| above the two-sided 95% critical "
               "value for that many seeds.\n\n" + paired_markdown(spec, pairs))
    files = {"summary.md": out / "summary.md", "summary.csv": out / "summary.csv", "cells.csv": out / "cells.csv",
             "paired.csv": out / "paired.csv", "grid.resolved.json": out / "grid.resolved.json"}
    atomic_write_text(files["grid.resolved.json"], json.dumps(_spec_dict(spec), indent=2, default=str) + "\n")
    atomic_write_text(files["summary.md"], md)
    atomic_write_text(files["summary.csv"], summary_csv(spec, rows))
    atomic_write_text(files["cells.csv"], cells_csv(spec, finished))
    atomic_write_text(files["paired.csv"], paired_csv(spec, pairs))
    return files


def _spec_dict(spec: GridSpec) -> dict[str, Any]:
    d = asdict(spec)
    d.pop("base_dir")  # machine-specific; relative paths are relative to the grid file
    d["cells"] = [{"key": c.key, "description": c.describe()} for c in spec.cells()]
    return d
