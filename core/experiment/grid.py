"""Experiment grids: the grid file, its cells and their keys.

A grid (calibration sources x methods x sparsities x structures x seeds) is a JSON file, read into
a :class:`GridSpec`. Each of its cells has a full recipe and a *cell key*: the SHA-256 of the cell's
recipe and evaluation settings, under which the run history stores the cell's result, so a rerun
skips every finished cell (:mod:`.runner` runs them, :mod:`.summary` writes their tables).

Grid file (every key but ``sources`` optional; relative paths are relative to the grid file)::

    {
      "name": "paper",
      "model": "demo",
      "sources": ["selfgen", {"label": "C4", "source": "../data/c4-train.jsonl.gz"},
                  {"label": "selfgen (paper)", "source": "selfgen:c4", "protocol": "paper"}],
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

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import CalibConfig, PruneConfig, Recipe, parse_structure
from ..errors import ConfigError
from ..prune.methods import registry

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
    protocol: str | None = None
    """Self-generation protocol of this source (``windows`` or ``paper``); None: the grid's
    ``calibration`` setting, else the default."""


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
            if mth not in registry.names():
                raise ConfigError(f"unknown method '{mth}' in 'methods' (choose from {', '.join(registry.names())}).")
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
            own = {"protocol": src.protocol} if src is not None and src.protocol else {}
            calib = CalibConfig(**{**self.calibration, "source": source, "seed": seed, **own})
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


# settings that cannot change a result: where blocks wait, and the permission to prune a model partly
_NOT_IN_KEY = {"device", "offload", "offload_to", "offload_dir", "allow_partial"}


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
            extra = sorted(set(s) - {"label", "source", "protocol"})
            if extra:
                raise ConfigError(f"sources[{i}]: unknown key(s) {', '.join(extra)} (use label, source and "
                                  "protocol).")
            protocol = s.get("protocol")
            if protocol is not None and not isinstance(protocol, str):
                raise ConfigError(f"sources[{i}]: 'protocol' must be a string (windows or paper).")
            label = s.get("label") or _default_label(s["source"])
            if not isinstance(label, str):
                raise ConfigError(f"sources[{i}]: 'label' must be a string.")
            out.append(SourceSpec(label, s["source"], protocol))
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


__all__ = ["DENSE", "GridSpec", "EvalSpec", "SourceSpec", "Cell", "setting_label"]
