"""The run history: every finished run in an embedded SQLite database.

The GUI's compare view and the experiment grids read and write it. One row per run with the
recipe, calibration provenance, metrics with what they were measured on (text, window length,
windows read), timings, export path, and the run's coverage (the share of the block weights it
pruned, and whether it was partial); the full report is kept as JSON so
nothing is lost when the schema grows (older databases get the added columns when opened). The
experiment cells that failed are kept apart (``failures``: key, description, the sentence), so no
reader mistakes them for runs.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    key TEXT,
    model TEXT,
    method TEXT,
    structure TEXT,
    sparsity REAL,
    calib_source TEXT,
    calib_nsamples INTEGER,
    calib_seqlen INTEGER,
    seed INTEGER,
    global_sparsity REAL,
    ppl_dense REAL,
    ppl_pruned REAL,
    seconds REAL,
    export_path TEXT,
    report TEXT NOT NULL,
    coverage REAL,
    partial INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_key ON runs(key);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    created REAL NOT NULL,
    description TEXT,
    error TEXT NOT NULL
);
"""
# columns added after the first schema: (name, declaration); older databases get them on open
ADDED_COLUMNS = (("coverage", "REAL"), ("partial", "INTEGER NOT NULL DEFAULT 0"), ("ppl_text", "TEXT"),
                 ("ppl_seqlen", "INTEGER"), ("ppl_windows", "INTEGER"), ("output_error", "REAL"))


def default_db_path() -> Path:
    env = os.environ.get("PRUNESTUDIO_DATA")
    if env:
        base = Path(env)
    else:
        from platformdirs import user_data_dir

        base = Path(user_data_dir("prunestudio", appauthor=False))
    return base / "history.sqlite3"


@dataclass(frozen=True)
class RunRow:
    id: int
    created: float
    key: str | None
    model: str
    method: str
    structure: str
    sparsity: float
    calib_source: str
    calib_nsamples: int
    calib_seqlen: int
    seed: int
    global_sparsity: float
    ppl_dense: float | None
    ppl_pruned: float | None
    seconds: float
    export_path: str | None
    report: dict[str, Any]
    coverage: float | None = None
    """The fraction of the block weights the run pruned (None: a run from before it was recorded)."""
    partial: bool = False
    """The run left dense some block weights a method would prune (the fused experts of an MoE)."""
    ppl_text: str | None = None
    """The text ``ppl_dense`` / ``ppl_pruned`` were measured on (its public name; None: not measured)."""
    ppl_seqlen: int | None = None
    """Their window length in tokens."""
    ppl_windows: int | None = None
    """The number of windows they read (None: not measured, or a run from before it was recorded)."""
    output_error: float | None = None
    """The mean relative output error of the pruned modules on calibration tokens (None: not measured)."""

    def measured_on(self) -> str:
        """"wiki.test.raw, 32 x 512 tokens", or "" when no perplexity says what it was measured on."""
        if not self.ppl_text:
            return ""
        n = f"{self.ppl_windows} x " if self.ppl_windows is not None else ""
        return f"{self.ppl_text}, {n}{self.ppl_seqlen} tokens"


class History:
    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con, con:
            con.executescript(SCHEMA)
            have = {r["name"] for r in con.execute("PRAGMA table_info(runs)")}
            for name, decl in ADDED_COLUMNS:
                if name not in have:
                    con.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.row_factory = sqlite3.Row
        return con

    def add(self, report: dict[str, Any], export_path: str | os.PathLike | None = None,
            key: str | None = None) -> int:
        cal = report.get("calibration", {}) or {}
        secs = report.get("seconds", {}) or {}
        total = secs.get("total") or sum(v for v in secs.values() if isinstance(v, (int, float)))
        model = report.get("model", {})
        row = (time.time(), key, model.get("name") if isinstance(model, dict) else str(model),
               report.get("method"), report.get("structure"), report.get("sparsity_target"),
               cal.get("source"), cal.get("nsamples"), cal.get("seqlen"), cal.get("seed"),
               report.get("global_sparsity"), report.get("ppl_dense"), report.get("ppl_pruned"),
               total, str(export_path) if export_path else None, json.dumps(report, default=str),
               *_coverage(report), *_measured_on(report), _output_error(report))
        with closing(self._connect()) as con, con:
            cur = con.execute(
                "INSERT INTO runs (created, key, model, method, structure, sparsity, calib_source, "
                "calib_nsamples, calib_seqlen, seed, global_sparsity, ppl_dense, ppl_pruned, seconds, "
                "export_path, report, coverage, partial, ppl_text, ppl_seqlen, ppl_windows, output_error) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
            return int(cur.lastrowid)

    def update(self, run_id: int, report: dict[str, Any] | None = None,
               export_path: str | os.PathLike | None = None) -> None:
        """Replace a run's report (e.g. after a later evaluation) and/or record where it was exported."""
        sets: list[str] = []
        args: list[Any] = []
        if report is not None:
            sets += ["report = ?", "ppl_dense = ?", "ppl_pruned = ?", "global_sparsity = ?", "coverage = ?",
                     "partial = ?", "ppl_text = ?", "ppl_seqlen = ?", "ppl_windows = ?", "output_error = ?"]
            args += [json.dumps(report, default=str), report.get("ppl_dense"), report.get("ppl_pruned"),
                     report.get("global_sparsity"), *_coverage(report), *_measured_on(report),
                     _output_error(report)]
        if export_path is not None:
            sets.append("export_path = ?")
            args.append(str(export_path))
        if not sets:
            return
        with closing(self._connect()) as con, con:
            con.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", (*args, run_id))

    def runs(self, key_prefix: str | None = None) -> list[RunRow]:
        q = "SELECT * FROM runs"
        args: tuple[Any, ...] = ()
        if key_prefix is not None:
            q += " WHERE key LIKE ?"
            args = (key_prefix + "%",)
        q += " ORDER BY id"
        with closing(self._connect()) as con:
            return [self._row(r) for r in con.execute(q, args)]

    def has_key(self, key: str) -> bool:
        with closing(self._connect()) as con:
            return con.execute("SELECT 1 FROM runs WHERE key = ? LIMIT 1", (key,)).fetchone() is not None

    # -- experiment cells that failed (not runs: a rerun of the grid tries them again)
    def add_failure(self, key: str, description: str, error: str) -> None:
        """Record that the experiment cell ``key`` failed, with the sentence that says why (the
        latest failure of a key replaces the one before)."""
        with closing(self._connect()) as con, con:
            con.execute("INSERT OR REPLACE INTO failures (key, created, description, error) VALUES (?,?,?,?)",
                        (key, time.time(), description, error))

    def clear_failure(self, key: str) -> None:
        """Forget the failure of ``key`` (it has run since)."""
        with closing(self._connect()) as con, con:
            con.execute("DELETE FROM failures WHERE key = ?", (key,))

    def failures(self) -> list[tuple[str, str, str]]:
        """(key, description, error) of every recorded failure, oldest first."""
        with closing(self._connect()) as con:
            return [(r["key"], r["description"] or "", r["error"])
                    for r in con.execute("SELECT key, description, error FROM failures ORDER BY created")]

    def get(self, run_id: int) -> RunRow | None:
        with closing(self._connect()) as con:
            r = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            return self._row(r) if r else None

    def delete(self, run_id: int) -> None:
        with closing(self._connect()) as con, con:
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def __iter__(self) -> Iterator[RunRow]:
        return iter(self.runs())

    @staticmethod
    def _row(r: sqlite3.Row) -> RunRow:
        d = dict(r)
        d["report"] = json.loads(d["report"])
        d["partial"] = bool(d["partial"])
        return RunRow(**d)


def _measured_on(report: dict[str, Any]) -> tuple[str | None, int | None, int | None]:
    """(text, window length, windows read) of the report's ``ppl_pruned`` / ``ppl_dense``: a run's
    ``eval`` section, or an experiment cell's first perplexity set (the one ``ppl_pruned`` is)."""
    ev = report.get("eval") or {}
    if ev.get("ppl_source"):
        text, windows = ev["ppl_source"], ev.get("windows")
    elif ev.get("ppl_sources"):
        text = ev["ppl_sources"][0]
        windows = (ev.get("windows") or {}).get(text)
    else:
        return None, None, None
    return str(text), ev.get("seqlen"), windows if isinstance(windows, int) else None


def _output_error(report: dict[str, Any]) -> float | None:
    """The report's mean relative output error of the pruned modules, if measured."""
    err = (report.get("output_error") or {}).get("mean")
    return float(err) if isinstance(err, (int, float)) else None


def _coverage(report: dict[str, Any]) -> tuple[float | None, int]:
    """The report's pruned share of the block weights and whether the run was partial."""
    cov = report.get("coverage") or {}
    share = cov.get("pruned_share")
    return (float(share) if isinstance(share, (int, float)) else None), int(bool(cov.get("partial")))
