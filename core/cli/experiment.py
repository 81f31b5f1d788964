"""``prunestudio experiment GRID.json --out DIR``: a resumable grid of pruning runs (see :mod:`experiment`).

    prunestudio experiment bench/grid_paper.json --out bench/results/paper
    prunestudio experiment grid.json --out results/ --dry-run      # list cells, done or pending
    prunestudio experiment grid.json --out results/ --summary-only # rewrite the tables
    python -m prunestudio.gui.views.experiment_plot grid.json results/   # draw results/plots.png

Every finished cell is stored in the run history database (``--db``, by default
``OUT/history.sqlite3``); a rerun skips the cells already there.

    prunestudio experiment grid.json --out results/ --executor ray                  # a local Ray
    prunestudio experiment grid.json --out results/ --executor ray --address auto   # `ray start --head`

With ``--executor ray`` every cell is a Ray task (one per GPU, or per ``--cpus-per-cell`` CPUs);
this process alone writes the history. A cell that fails for a bad input is recorded as failed
with its sentence and the others go on; the exit status is then 1.
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
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="who runs the cells: this process, one after another (default), or Ray tasks "
                        "(pip install 'prunestudio[cluster]')")
    p.add_argument("--address", default=None,
                   help="with --executor ray: the Ray cluster to join (auto, or HOST:PORT of `ray start --head`); "
                        "default: start a local Ray on this machine")
    p.add_argument("--gpus-per-cell", type=float, default=None, metavar="G",
                   help="with --executor ray: GPUs each cell takes (default 1 where the cluster has GPUs)")
    p.add_argument("--cpus-per-cell", type=float, default=None, metavar="C",
                   help="with --executor ray: CPUs (and torch threads) each cell takes (default 1 with a GPU, "
                        "else all of a node's)")
    p.set_defaults(handler=cmd_experiment)


def cmd_experiment(args: argparse.Namespace) -> int:
    from ..events import run_to_completion
    from ..experiment import (
        CellFailed,
        CellFinished,
        CellSkipped,
        CellStarted,
        GridSpec,
        default_db,
        iter_experiment,
        make_executor,
        write_summary,
    )
    from .progress import ProgressPrinter

    printer = ProgressPrinter(quiet=getattr(args, "quiet", False))
    executor = make_executor(args.executor, address=args.address, gpus_per_cell=args.gpus_per_cell,
                             cpus_per_cell=args.cpus_per_cell)
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
        elif isinstance(ev, CellFailed):
            printer.say(f"== cell {ev.index + 1}/{ev.total} failed ({ev.description}): {ev.error}")
        else:
            printer(ev)

    res = run_to_completion(iter_experiment(spec, args.out, args.db, dry_run=args.dry_run, executor=executor),
                            on_event)
    if not args.dry_run:
        printer.say(f"{res.executed} cells run, {res.skipped} already done"
                    + (f", {len(res.failed)} failed (a rerun tries them again)" if res.failed else "")
                    + f"; history {res.db_path}")
        for f in res.files.values():
            print(f)
    sys.stdout.flush()
    return 1 if res.failed else 0
