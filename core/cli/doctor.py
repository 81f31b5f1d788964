"""``prunestudio doctor``: whether this machine can run Prune Studio.

    prunestudio doctor [--no-qt] [--export-dir DIR] [--json]

One line per check (``ok``, ``warning`` or ``problem`` and a sentence), the commands that fix a
problem indented below it. Exit status 0 when nothing blocks (warnings included), 1 when a check
found a problem. ``make run`` runs it before starting the desktop app. The checks themselves are in
:mod:`prunestudio.core.model.system_checks`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence, TextIO


def register(subparsers: Any) -> None:
    """Add ``doctor`` to the main CLI's subparsers."""
    p = subparsers.add_parser(
        "doctor", help="check that this machine can run Prune Studio (Qt, torch, device, memory, disk, folders)",
        description="Checks the desktop app's Qt platform plugin (and names the missing system libraries "
                    "with their install commands), torch and the device, the CPU's bf16 support, threads, "
                    "free memory and disk, and the cache and export folders. Exit status 1 when something "
                    "blocks.")
    p.add_argument("--no-qt", action="store_true", help="leave out the desktop app's Qt check")
    p.add_argument("--export-dir", default=None,
                   help="the export folder to check (default: the desktop app's, ~/prunestudio-exports)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(handler=cmd_doctor)


def format_checks(checks: Sequence[Any]) -> str:
    """``level   name: sentence`` per check, each fix command indented on its own line below."""
    lines = []
    for c in checks:
        lines.append(f"{c.level:<8} {c.name}: {c.sentence}")
        lines += [f"         {fix}" for fix in c.fixes]
    return "\n".join(lines)


def cmd_doctor(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from ..model.system_checks import blocking, run_checks

    out = out if out is not None else sys.stdout
    checks = run_checks(export_dir=Path(args.export_dir) if args.export_dir else None, qt=not args.no_qt)
    if args.json:
        out.write(json.dumps([asdict(c) for c in checks], indent=2) + "\n")
    else:
        out.write(format_checks(checks) + "\n")
        if blocking(checks):
            out.write("Fix the problems above, then try again (`prunestudio doctor` checks again).\n")
    out.flush()
    return 1 if blocking(checks) else 0
