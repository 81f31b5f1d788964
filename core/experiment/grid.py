"""Experiment grids: calibration sources x methods x sparsities x structures x seeds, headless.

A grid is a JSON file (see :class:`GridSpec`); every cell loads the model's original weights,
builds its calibration set, prunes, evaluates the perplexity suites and the zero-shot tasks, and
is written to the run history (:class:`~.history.History`) under a *cell key*: the SHA-256 of the
cell's full recipe and evaluation settings. A rerun skips every cell whose key is already in the
database, so an interrupted experiment resumes where it stopped, and a summary table (mean and
sample standard deviation over seeds) can be written from a partial run at any time. Within one
run, a calibration set is built once per source, seed and calibration settings and reused by every
method and sparsity setting (self-generation dominates a cell's cost on a CPU).

Grid file (every key but ``sources`` optional; relative paths are relative to the grid file)::

    {
      "name": "paper",
      "model": "demo",
      "sources": ["selfgen", {"label": "C4", "source": "../data/c4-train.jsonl.gz"}],
      "methods": ["wanda", "sparsegpt"],
      "sparsities": [0.5, 0.6],              # used by unstructured cells
      "structures": ["unstructured", "2:4"],  # an N:M cell has sparsity N/M (one per structure)
      "seeds": [0, 1, 2],
      "dense_baseline": true,                 # one unpruned row, evaluated the same way
      "calibration": {"nsamples": 64, "seqlen": 512},   # any CalibConfig setting but source/seed
      "prune": {"batch_size": 8},                       # any PruneConfig setting but method/sparsity/structure
      "eval": {"ppl": ["wikitext2", "c4"], "seqlen": 512, "max_windows": null, "ppl_data": null,
               "tasks": ["arc_easy", ...], "limit": 100, "task_data": null, "batch_size": 8},
      "device": "auto", "dtype": "auto"
    }
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Sequence

from ..config import METHODS, CalibConfig, PruneConfig, Recipe, parse_structure
from ..errors import ConfigError
from ..events import Event, Message, PhaseDone, PhaseProgress, PhaseStarted

StopFn = Callable[[], bool]

_TOP_KEYS = {"name", "model", "sources", "methods", "sparsities", "structures", "seeds", "dense_baseline",
             "calibration", "prune", "eval", "device", "dtype", "trust_remote_code", "description"}
_EVAL_KEYS = {"ppl", "seqlen", "max_windows", "ppl_data", "tasks", "limit", "task_data", "batch_size",
              "ppl_batch_size"}
_CALIB_FIXED = {"source", "seed"}
_PRUNE_FIXED = {"method", "sparsity", "structure"}
DENSE = "dense"


# ---- the grid file ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceSpec:
    label: str
    source: str
    """As written in the grid file (part of the cell key)."""


@dataclass(frozen=True)
class EvalSpec:
    ppl: tuple[str, ...] = ("wikitext2", "c4")
    seqlen: int = 512
    max_windows: int | None = None
    ppl_data: str | None = None
    tasks: tuple[str, ...] = ()
    limit: int | None = None
    task_data: str | None = None
    batch_size: int = 8
    ppl_batch_size: int = 4

    def key_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("batch_size")  # batching changes speed, not the numbers
        d.pop("ppl_batch_size")
        return d


@dataclass(frozen=True)
class Cell:
    key: str
    kind: str  # "dense" or "pruned"
    source_label: str
    method: str
    setting: str  # "50%", "2:4", "dense"
    seed: int | None
    recipe: Recipe  # with paths resolved against the grid folder

    def describe(self) -> str:
        if self.kind == DENSE:
            return "dense baseline"
        return f"{self.method} {self.setting} | {self.source_label} | seed {self.seed}"


def setting_label(structure: str, sparsity: float) -> str:
    n, m = parse_structure(structure)
    return f"{n}:{m}" if n else f"{round(sparsity * 100, 2):g}%"


@dataclass(frozen=True)
class GridSpec:
    sources: tuple[SourceSpec, ...]
    name: str = "experiment"
    model: str = "demo"
    methods: tuple[str, ...] = ("wanda",)
    sparsities: tuple[float, ...] = (0.5,)
    structures: tuple[str, ...] = ("unstructured",)
    seeds: tuple[int, ...] = (0,)
    dense_baseline: bool = True
    calibration: dict[str, Any] = field(default_factory=dict)
    prune: dict[str, Any] = field(default_factory=dict)
    eval: EvalSpec = field(default_factory=EvalSpec)
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    base_dir: Path = Path(".")
    """Folder that relative paths in the grid are resolved against (not part of any key)."""

    # -- reading
    @classmethod
    def load(cls, path: str | Path) -> "GridSpec":
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"Grid file not found: {p}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"Could not read the grid file {p.name}: {e}") from e
        except json.JSONDecodeError as e:
            raise ConfigError(f"The grid file {p.name} is not valid JSON (line {e.lineno}: {e.msg}).") from e
        try:
            return cls.from_dict(data, base_dir=p.resolve().parent)
        except ConfigError as e:
            raise ConfigError(f"{p.name}: {e}") from None

    @classmethod
    def from_dict(cls, d: Any, base_dir: str | Path = ".") -> "GridSpec":
        if not isinstance(d, dict):
            raise ConfigError("A grid must be a JSON object.")
        unknown = sorted(set(d) - _TOP_KEYS)
        if unknown:
            raise ConfigError(f"unknown grid key(s) {', '.join(unknown)} (known: {', '.join(sorted(_TOP_KEYS))}).")
        base = Path(base_dir)
        sources = _sources(d.get("sources"))
        methods = _str_list(d, "methods", ("wanda",))
        for mth in methods:
            if mth not in METHODS:
                raise ConfigError(f"unknown method '{mth}' in 'methods' (choose from {', '.join(METHODS)}).")
        sparsities = tuple(_num_list(d, "sparsities", (0.5,)))
        for s in sparsities:
            if not 0.0 < s < 1.0:
                raise ConfigError(f"every sparsity must be between 0 and 1 (exclusive), got {s}; "
                                  "the dense baseline is 'dense_baseline': true.")
        structures = _str_list(d, "structures", ("unstructured",))
        structures = tuple(PruneConfig(structure=s).structure for s in structures)
        seeds = _seed_list(d)
        calib = _sub(d, "calibration", _CALIB_FIXED, CalibConfig)
        prune = _sub(d, "prune", _PRUNE_FIXED, PruneConfig)
        ev = _eval(d.get("eval", {}))
        if not isinstance(d.get("dense_baseline", True), bool):
            raise ConfigError("'dense_baseline' must be true or false.")
        model = d.get("model", "demo")
        if not isinstance(model, str) or not model:
            raise ConfigError("'model' must be a model spec: demo, a folder, a .gguf file or a hub id.")
        name = d.get("name", "experiment")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("'name' must be a non-empty string.")
        spec = cls(sources=sources, name=name, model=model, methods=methods, sparsities=sparsities,
                   structures=structures, seeds=seeds, dense_baseline=d.get("dense_baseline", True),
                   calibration=calib, prune=prune, eval=ev, device=str(d.get("device", "auto")),
                   dtype=str(d.get("dtype", "auto")), trust_remote_code=bool(d.get("trust_remote_code", False)),
                   base_dir=base)
        spec.check_paths()
        spec.cells()  # every cell's recipe must be valid (N:M vs method, sample sizes, ...)
        return spec

    # -- paths
    def resolve(self, s: str | None) -> str | None:
        """A path as written in the grid, made absolute against the grid folder when it exists there."""
        if s is None:
            return None
        p = Path(s).expanduser()
        if not p.is_absolute() and (self.base_dir / p).exists():
            return str((self.base_dir / p).resolve())
        return str(p) if p.is_absolute() or p.exists() else s

    def resolve_source(self, source: str) -> str:
        from ..calib.textsources import PRESETS

        if source == "selfgen" or source.startswith("hf:") or source in PRESETS:
            return source
        if source.startswith("selfgen:"):
            return "selfgen:" + self.resolve_source(source.split(":", 1)[1])
        base, sep, fld = source.partition("#")
        return (self.resolve(base) or base) + sep + fld

    def check_paths(self) -> None:
        from ..calib.textsources import PRESETS

        for s in self.sources:
            src = s.source.split(":", 1)[1] if s.source.startswith("selfgen:") else s.source
            if src == "selfgen" or src.startswith("hf:") or src.split("#")[0] in PRESETS:
                continue
            path = Path(self.resolve_source(src).split("#")[0])
            if not path.exists():
                raise ConfigError(f"calibration source '{s.label}': file not found: {src} "
                                  f"(relative paths are relative to the grid file's folder, {self.base_dir}).")
        for key in ("ppl_data", "task_data"):
            v = getattr(self.eval, key)
            if v is not None and not Path(self.resolve(v)).is_dir():
                raise ConfigError(f"eval.{key}: folder not found: {v}.")
        from ..evaluate.ppl_suites import is_suite

        for src in self.eval.ppl:
            if not is_suite(src) and not src.startswith("hf:") and not Path(self.resolve(src)).exists():
                raise ConfigError(f"eval.ppl: '{src}' is neither a suite (wikitext2, c4) nor an existing file.")

    # -- cells
    def settings(self) -> list[tuple[str, float]]:
        """(structure, sparsity) per setting: unstructured x sparsities, then one per N:M structure."""
        out: list[tuple[str, float]] = []
        for st in self.structures:
            n, m = parse_structure(st)
            if n:
                out.append((st, n / m))
            else:
                out.extend((st, s) for s in self.sparsities)
        return out

    def _recipe(self, src: SourceSpec | None, method: str, structure: str, sparsity: float, seed: int,
                resolved: bool) -> Recipe:
        source = src.source if src is not None else "selfgen"
        if resolved:
            source = self.resolve_source(source)
        model = self.model
        if resolved and model != "demo":
            model = self.resolve(model) or model
        try:
            prune = PruneConfig(**{**self.prune, "method": method, "sparsity": sparsity, "structure": structure})
            calib = CalibConfig(**{**self.calibration, "source": source, "seed": seed})
        except ConfigError as e:
            raise ConfigError(f"cell {method} {setting_label(structure, sparsity)} seed {seed}: {e}") from None
        return Recipe(model=model, prune=prune, calibration=calib, eval_ppl=(), eval_seqlen=self.eval.seqlen,
                      eval_max_windows=self.eval.max_windows, device=self.device, dtype=self.dtype,
                      trust_remote_code=self.trust_remote_code)

    def cell_key(self, kind: str, recipe: Recipe) -> str:
        """SHA-256 of the cell's recipe and evaluation settings, paths as written in the grid.

        Only settings that differ from their defaults enter the key, and settings that cannot change
        the result (device, offloading, batch sizes of the evaluation) stay out, so a setting added
        to :mod:`config` later does not invalidate the cells already in a results database.
        """
        d: dict[str, Any] = {"key_version": 2, "kind": kind, "eval": self.eval.key_dict()}
        if kind == DENSE:
            d.update(model=recipe.model, dtype=recipe.dtype)
        else:
            d["recipe"] = _non_default(recipe)
        blob = json.dumps(d, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()

    def cells(self) -> list[Cell]:
        """Every cell, seeds outermost, so a partial run has whole seeds for every setting."""
        out: list[Cell] = []
        if self.dense_baseline:
            r = self._recipe(None, "magnitude", "unstructured", 0.5, 0, resolved=True)
            key = self.cell_key(DENSE, self._recipe(None, "magnitude", "unstructured", 0.5, 0, resolved=False))
            out.append(Cell(key, DENSE, DENSE, DENSE, DENSE, None, r))
        for seed in self.seeds:
            for structure, sparsity in self.settings():
                for method in self.methods:
                    for src in self.sources:
                        raw = self._recipe(src, method, structure, sparsity, seed, resolved=False)
                        r = self._recipe(src, method, structure, sparsity, seed, resolved=True)
                        out.append(Cell(self.cell_key("pruned", raw), "pruned", src.label, method,
                                        setting_label(structure, sparsity), seed, r))
        keys = [c.key for c in out]
        if len(set(keys)) != len(keys):
            raise ConfigError("two cells of the grid are identical (a source, method, sparsity or seed "
                              "is listed twice).")
        return out


_NOT_IN_KEY = {"device", "offload", "offload_to", "offload_dir"}


def _non_default(obj: Any) -> dict[str, Any]:
    """The fields of a config dataclass that differ from their defaults (recursively)."""
    from dataclasses import MISSING, fields, is_dataclass

    out: dict[str, Any] = {}
    for f in fields(obj):
        if f.name in _NOT_IN_KEY:
            continue
        v = getattr(obj, f.name)
        if is_dataclass(v):
            out[f.name] = _non_default(v)
            continue
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = MISSING
        if default is not MISSING and v == default:
            continue
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def _sources(v: Any) -> tuple[SourceSpec, ...]:
    if not isinstance(v, list) or not v:
        raise ConfigError("'sources' must be a non-empty list of calibration sources "
                          "(strings, or objects with 'label' and 'source').")
    out = []
    for i, s in enumerate(v):
        if isinstance(s, str) and s.strip():
            out.append(SourceSpec(_default_label(s), s))
        elif isinstance(s, dict) and isinstance(s.get("source"), str) and s["source"].strip():
            extra = sorted(set(s) - {"label", "source"})
            if extra:
                raise ConfigError(f"sources[{i}]: unknown key(s) {', '.join(extra)} (use label and source).")
            label = s.get("label") or _default_label(s["source"])
            if not isinstance(label, str):
                raise ConfigError(f"sources[{i}]: 'label' must be a string.")
            out.append(SourceSpec(label, s["source"]))
        else:
            raise ConfigError(f"sources[{i}] must be a source string or an object with 'label' and 'source'.")
    labels = [s.label for s in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"two sources share the label {dup[0]!r}; give each a distinct 'label'.")
    return tuple(out)


def _default_label(source: str) -> str:
    from ..calib.textsources import describe_source

    if source.startswith("selfgen:"):
        return "selfgen:" + describe_source(source.split(":", 1)[1])
    return source if source == "selfgen" else describe_source(source)


def _str_list(d: dict[str, Any], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    v = d.get(key, list(default))
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        raise ConfigError(f"'{key}' must be a non-empty list of strings.")
    return tuple(v)


def _num_list(d: dict[str, Any], key: str, default: tuple[float, ...]) -> list[float]:
    v = d.get(key, list(default))
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise ConfigError(f"'{key}' must be a non-empty list of numbers.")
    return [float(x) for x in v]


def _seed_list(d: dict[str, Any]) -> tuple[int, ...]:
    v = d.get("seeds", [0])
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise ConfigError("'seeds' must be a non-empty list of whole numbers.")
    if len(set(v)) != len(v):
        raise ConfigError("'seeds' lists a seed twice.")
    return tuple(v)


def _sub(d: dict[str, Any], key: str, fixed: set[str], cls: type) -> dict[str, Any]:
    from dataclasses import fields

    v = d.get(key, {}) or {}
    if not isinstance(v, dict):
        raise ConfigError(f"'{key}' must be an object of {cls.__name__} settings.")
    bad = sorted(set(v) & fixed)
    if bad:
        raise ConfigError(f"'{key}' must not set {', '.join(bad)}: the grid's axes set them.")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(v) - known)
    if unknown:
        raise ConfigError(f"unknown {key} setting(s) {', '.join(unknown)}.")
    out = dict(v)
    for k in ("block_sparsity", "skip_modules"):
        if isinstance(out.get(k), list):
            out[k] = tuple(out[k])
    return out


def _eval(v: Any) -> EvalSpec:
    from ..evaluate.task_data import TASKS

    if not isinstance(v, dict):
        raise ConfigError("'eval' must be an object.")
    unknown = sorted(set(v) - _EVAL_KEYS)
    if unknown:
        raise ConfigError(f"unknown eval setting(s) {', '.join(unknown)} (known: {', '.join(sorted(_EVAL_KEYS))}).")
    ppl = v.get("ppl", ["wikitext2", "c4"])
    ppl = [ppl] if isinstance(ppl, str) else ppl
    if not isinstance(ppl, list) or not all(isinstance(x, str) and x for x in ppl):
        raise ConfigError("eval.ppl must be a list of perplexity suites or files.")
    tasks = v.get("tasks", [])
    if tasks == "all":
        tasks = list(TASKS)
    tasks = [tasks] if isinstance(tasks, str) else tasks
    if not isinstance(tasks, list) or not all(isinstance(x, str) for x in tasks):
        raise ConfigError("eval.tasks must be a list of task names or \"all\".")
    for t in tasks:
        if t not in TASKS:
            raise ConfigError(f"eval.tasks: unknown zero-shot task '{t}' (tasks: {', '.join(TASKS)}).")
    for k in ("seqlen", "batch_size", "ppl_batch_size"):
        x = v.get(k, {"seqlen": 512, "batch_size": 8, "ppl_batch_size": 4}[k])
        if not isinstance(x, int) or isinstance(x, bool) or x < 1 or (k == "seqlen" and x < 2):
            raise ConfigError(f"eval.{k} must be a whole number of at least {2 if k == 'seqlen' else 1}.")
    for k in ("max_windows", "limit"):
        x = v.get(k)
        if x is not None and (not isinstance(x, int) or isinstance(x, bool) or x < 1):
            raise ConfigError(f"eval.{k} must be null or a whole number of at least 1 (got {x!r}).")
    for k in ("ppl_data", "task_data"):
        if v.get(k) is not None and not isinstance(v[k], str):
            raise ConfigError(f"eval.{k} must be a folder path.")
    if not ppl and not tasks:
        raise ConfigError("eval has neither perplexity suites nor zero-shot tasks: nothing to measure.")
    return EvalSpec(ppl=tuple(ppl), seqlen=v.get("seqlen", 512), max_windows=v.get("max_windows"),
                    ppl_data=v.get("ppl_data"), tasks=tuple(tasks), limit=v.get("limit"),
                    task_data=v.get("task_data"), batch_size=v.get("batch_size", 8),
                    ppl_batch_size=v.get("ppl_batch_size", 4))


# ---- running ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CellStarted(Event):
    index: int
    total: int
    description: str
    key: str


@dataclass(frozen=True)
class CellSkipped(Event):
    index: int
    total: int
    description: str
    key: str


@dataclass(frozen=True)
class CellFinished(Event):
    index: int
    total: int
    description: str
    key: str
    metrics: dict[str, float | None]
    seconds: float


@dataclass
class ExperimentResult:
    executed: int
    skipped: int
    cells: list[Cell]
    db_path: Path
    files: dict[str, Path]


def default_db(out_dir: str | Path) -> Path:
    return Path(out_dir) / "history.sqlite3"


def iter_experiment(spec: GridSpec, out_dir: str | Path, db_path: str | Path | None = None,
                    dry_run: bool = False, should_stop: StopFn = lambda: False,
                    plots: bool = True) -> Generator[Event, None, ExperimentResult]:
    """Run every pending cell of ``spec``; write the summary after each cell. Returns counts."""
    from ..run.history import History

    out = Path(out_dir)
    db = Path(db_path) if db_path is not None else default_db(out)
    cells = spec.cells()
    if dry_run:
        hist = History(db) if db.exists() else None
        for i, c in enumerate(cells):
            done = hist is not None and hist.has_key(c.key)
            yield Message(f"[{i + 1}/{len(cells)}] {'done   ' if done else 'pending'} {c.describe()}  {c.key[:12]}")
        return ExperimentResult(0, 0, cells, db, {})
    out.mkdir(parents=True, exist_ok=True)
    hist = History(db)
    runner: _Runner | None = None
    executed = skipped = 0
    files: dict[str, Path] = {}
    yield PhaseStarted("experiment", total=len(cells))
    t_all = time.perf_counter()
    for i, cell in enumerate(cells):
        if hist.has_key(cell.key):
            skipped += 1
            yield CellSkipped(i, len(cells), cell.describe(), cell.key)
            continue
        if runner is None:
            runner = _Runner(spec)
            yield from runner.load()
        yield CellStarted(i, len(cells), cell.describe(), cell.key)
        t0 = time.perf_counter()
        report = yield from runner.run_cell(cell, should_stop)
        report["seconds"]["cell"] = report["seconds"]["total"] = time.perf_counter() - t0
        hist.add(report, None, key=cell.key)
        executed += 1
        yield CellFinished(i, len(cells), cell.describe(), cell.key, cell_metrics(report, spec.eval),
                           time.perf_counter() - t0)
        files = write_summary(spec, hist, out, plots=False)
        yield PhaseProgress("experiment", i + 1, len(cells))
    files = write_summary(spec, hist, out, plots=plots)
    yield PhaseDone("experiment", time.perf_counter() - t_all)
    return ExperimentResult(executed, skipped, cells, db, files)


def run_experiment(spec: GridSpec, out_dir: str | Path, db_path: str | Path | None = None,
                   on_event: Callable[[Event], None] | None = None, **kw: Any) -> ExperimentResult:
    from ..prune.pipeline import run_to_completion

    return run_to_completion(iter_experiment(spec, out_dir, db_path, **kw), on_event)


def _spec_dict(spec: GridSpec) -> dict[str, Any]:
    d = asdict(spec)
    d.pop("base_dir")  # machine-specific; relative paths are relative to the grid file
    d["cells"] = [{"key": c.key, "description": c.describe()} for c in spec.cells()]
    return d


class _Runner:
    """One loaded model; every cell starts from a copy of its original weights."""

    def __init__(self, spec: GridSpec) -> None:
        self.spec = spec
        self.loaded: Any = None
        self.original: dict[str, Any] = {}
        self._ids: dict[str, Any] = {}
        self._calib: dict[str, Any] = {}

    def load(self) -> Generator[Event, None, None]:
        from ..model.loading import load_model

        t0 = time.perf_counter()
        yield PhaseStarted("load", total=1)
        model = self.spec.model if self.spec.model == "demo" else (self.spec.resolve(self.spec.model) or self.spec.model)
        self.loaded = load_model(model, self.spec.device, self.spec.dtype, self.spec.trust_remote_code)
        self.original = {k: v.detach().clone() for k, v in self.loaded.model.state_dict().items()}
        yield PhaseDone("load", time.perf_counter() - t0)
        yield Message(f"Loaded {self.loaded.name}: {self.loaded.info['parameters'] / 1e6:.1f}M parameters on "
                      f"{self.loaded.device}")

    def restore(self) -> None:
        from ..prune.pipeline import mark_incomplete

        self.loaded.model.load_state_dict(self.original)
        mark_incomplete(self.loaded.model, False)

    def eval_ids(self, suite: str) -> Any:
        from ..evaluate.perplexity import eval_ids

        if suite not in self._ids:
            ev = self.spec.eval
            data = self.spec.resolve(ev.ppl_data) if ev.ppl_data else None
            from ..evaluate.ppl_suites import is_suite

            src = suite if is_suite(suite) or suite.startswith("hf:") else (self.spec.resolve(suite) or suite)
            self._ids[suite] = eval_ids(self.loaded.tokenizer, src, ev.seqlen, data)
        return self._ids[suite]

    def run_cell(self, cell: Cell, should_stop: StopFn) -> Generator[Event, None, dict[str, Any]]:
        from ..run.job import place_model, versions

        self.restore()
        loaded = self.loaded
        if cell.kind == DENSE:
            report: dict[str, Any] = {
                "format": "prunestudio-report", "version": 1,
                "model": {"name": loaded.name, **{k: v for k, v in loaded.info.items() if k != "blocks_path"}},
                "method": DENSE, "structure": DENSE, "sparsity_target": 0.0, "global_sparsity": 0.0,
                "ppl_dense": None, "ppl_pruned": None,
                "calibration": {"source": None, "nsamples": 0, "seqlen": 0, "seed": None, "sha256": None},
                "recipe": {"model": cell.recipe.model if cell.recipe.model == "demo" else loaded.name,
                           "dtype": cell.recipe.dtype},
                "device": str(loaded.device), "dtype": str(loaded.dtype).replace("torch.", ""),
                "versions": versions(), "seconds": {},
            }
        else:
            report = yield from self._prune(cell, should_stop)
        place_model(loaded)
        yield from self._evaluate(report, should_stop)
        report["experiment"] = {"name": self.spec.name, "key": cell.key, "kind": cell.kind,
                                "source_label": cell.source_label, "method": cell.method,
                                "setting": cell.setting, "seed": cell.seed}
        return report

    def _prune(self, cell: Cell, should_stop: StopFn) -> Generator[Event, None, dict[str, Any]]:
        """Calibrate (a set already built for the same calibration settings is reused: the
        sparsity settings of a grid share their calibration sets, and self-generation is the
        expensive part of a cell on a CPU), prune, and build the run report."""
        from ..errors import CalibrationError
        from ..prune.pipeline import iter_prune
        from ..run import job

        recipe, loaded = cell.recipe, self.loaded
        validate = getattr(job, "validate_recipe", None)
        if validate is not None:
            validate(loaded, recipe)
        seconds: dict[str, float] = {}
        calib = None
        if recipe.prune.needs_calibration:
            ck = json.dumps(asdict(recipe.calibration), sort_keys=True, default=list)
            t0 = time.perf_counter()
            if ck in self._calib:
                calib = self._calib[ck]
                yield Message(f"Calibration set reused ({len(calib)} samples from {cell.source_label}, "
                              f"seed {cell.seed})")
            else:
                calib = yield from job.build_calibration(loaded, recipe.calibration, should_stop)
                if len(calib) == 0:
                    raise CalibrationError("No calibration samples were produced.")
                while len(self._calib) >= 16:
                    self._calib.pop(next(iter(self._calib)))
                self._calib[ck] = calib
                seconds["calibration"] = time.perf_counter() - t0
        ids = calib.input_ids() if calib is not None else None
        result = yield from iter_prune(loaded.model, ids, recipe.prune, loaded.device, should_stop)
        report = job.build_report(loaded, recipe, calib, result, None, None, seconds)
        report["calibration_reused"] = bool(calib is not None and "calibration" not in seconds)
        return report

    def _evaluate(self, report: dict[str, Any], should_stop: StopFn) -> Generator[Event, None, None]:
        from ..evaluate.perplexity import iter_perplexity
        from ..evaluate.zeroshot import iter_zeroshot

        ev = self.spec.eval
        loaded = self.loaded
        report["ppl"] = {}
        report["eval"] = {"ppl_sources": list(ev.ppl), "seqlen": ev.seqlen, "max_windows": ev.max_windows,
                          "windows": {}, "tasks": list(ev.tasks), "limit": ev.limit}
        for suite in ev.ppl:
            t0 = time.perf_counter()
            ids = self.eval_ids(suite)
            ppl = yield from iter_perplexity(loaded.model, ids, ev.seqlen, batch_size=ev.ppl_batch_size,
                                             max_windows=ev.max_windows, device=loaded.device,
                                             should_stop=should_stop, phase=f"ppl:{suite}")
            n = ids.numel() // ev.seqlen
            report["eval"]["windows"][suite] = min(n, ev.max_windows) if ev.max_windows else n
            report["ppl"][suite] = ppl
            report["seconds"][f"ppl_{suite}"] = time.perf_counter() - t0
            yield Message(f"perplexity {suite}: {ppl:.3f}")
        if ev.ppl:
            report["ppl_pruned"] = report["ppl"][ev.ppl[0]]
        if ev.tasks:
            t0 = time.perf_counter()
            data = self.spec.resolve(ev.task_data) if ev.task_data else None
            res = yield from iter_zeroshot(loaded.model, loaded.tokenizer, list(ev.tasks), data, ev.limit,
                                           ev.batch_size, should_stop)
            report["tasks"] = {k: v.to_dict() for k, v in res.items()}
            report["tasks_mean_acc"] = sum(v.acc for v in res.values()) / len(res)
            report["seconds"]["zeroshot"] = time.perf_counter() - t0
            yield Message(f"zero-shot mean accuracy: {report['tasks_mean_acc']:.4f} "
                          f"({', '.join(f'{k} {v.acc:.3f}' for k, v in res.items())})")


# ---- summary ------------------------------------------------------------------------------------

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


_LABELS = {"zeroshot": "0-shot acc (mean of {k})"}


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


def write_summary(spec: GridSpec, hist: Any, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """summary.md, summary.csv and cells.csv (``plots`` is accepted for compatibility; see below)."""
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
    _atomic(files["grid.resolved.json"], json.dumps(_spec_dict(spec), indent=2, default=str) + "\n")
    _atomic(files["summary.md"], md)
    _atomic(files["summary.csv"], summary_csv(spec, rows))
    _atomic(files["cells.csv"], cells_csv(spec, finished))
    # plots.png is drawn by the GUI package (python -m prunestudio.gui.views.experiment_plot GRID OUT):
    # the engine never imports Qt.
    return files


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


__all__ = ["GridSpec", "EvalSpec", "SourceSpec", "Cell", "iter_experiment", "run_experiment", "summarize",
           "summary_markdown", "summary_csv", "write_summary", "collect", "mean_std", "cell_metrics",
           "CellStarted", "CellSkipped", "CellFinished", "ExperimentResult"]
