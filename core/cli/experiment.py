"""``prunestudio experiment GRID.json --out DIR``: a resumable grid of pruning runs (see :mod:`experiment`).

    prunestudio experiment bench/grid_paper.json --out bench/results/paper
    prunestudio experiment grid.json --out results/ --dry-run      # list cells, done or pending
    prunestudio experiment grid.json --out results/ --summary-only # rewrite the tables
    python -m prunestudio.gui.views.experiment_plot grid.json results/   # draw results/plots.png

Every finished cell is stored in the run history database (``--db``, by default
``OUT/history.sqlite3``); a rerun skips the cells already there.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("experiment", help="run a grid of pruning experiments from a JSON file (resumable)")
    p.add_argument("grid", help="the grid JSON file")
    p.add_argument("--out", required=True, help="results folder (summary.md, summary.csv, cells.csv)")
    p.add_argument("--db", default=None, help="run history database (default: OUT/history.sqlite3)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and whether each is done; run nothing")
    p.add_argument("--summary-only", action="store_true", help="write the summary of the finished cells; run nothing")
    p.set_defaults(handler=cmd_experiment)


def cmd_experiment(args: argparse.Namespace) -> int:
    from ..events import run_to_completion
    from ..experiment import (
        CellFinished,
        CellSkipped,
        CellStarted,
        GridSpec,
        default_db,
        iter_experiment,
        write_summary,
    )
    from .progress import ProgressPrinter

    printer = ProgressPrinter(quiet=getattr(args, "quiet", False))
    spec = GridSpec.load(args.grid)
    if args.summary_only:
        from ..run.history import History

        files = write_summary(spec, History(args.db or default_db(args.out)), args.out)
        for f in files.values():
            print(f)
        return 0

    def on_event(ev: Any) -> None:
        if isinstance(ev, CellStarted):
            printer.say(f"== cell {ev.index + 1}/{ev.total}: {ev.description} ({ev.key[:12]})")
        elif isinstance(ev, CellSkipped):
            printer.say(f"== cell {ev.index + 1}/{ev.total}: {ev.description}: already done, skipped")
        elif isinstance(ev, CellFinished):
            ms = ", ".join(f"{k} {v:.4g}" for k, v in ev.metrics.items() if v is not None and not k.startswith("acc:"))
            printer.say(f"== cell {ev.index + 1}/{ev.total} done in {ev.seconds:.0f}s: {ms}")
        else:
            printer(ev)

    res = run_to_completion(iter_experiment(spec, args.out, args.db, dry_run=args.dry_run), on_event)
    if not args.dry_run:
        printer.say(f"{res.executed} cells run, {res.skipped} already done; history {res.db_path}")
        for f in res.files.values():
            print(f)
    sys.stdout.flush()
    return 0
