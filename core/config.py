"""Typed, validated settings. A recipe is the JSON form of these dataclasses.

The CLI, the GUI and experiment grids build the same objects; nothing downstream ever sees an
argparse namespace. Every constructor validates and raises :class:`ConfigError` with a sentence.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .prune.methods import registry as methods

DSNOT_SKIPS = ("mlp", "attention", "none")
DSNOT_RULES = ("reference", "decrease")  # core/prune/methods/dsnot.py: RULES
SELFGEN_PROTOCOLS = ("windows", "paper")  # core/calib/selfgen/settings.py: PROTOCOLS
OFFLOAD_TARGETS = ("cpu", "disk")
OFFLOAD_MODES = ("none", "cpu", "disk")
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_structure(structure: str) -> tuple[int, int]:
    """``unstructured`` -> (0, 0); ``"2:4"`` -> (2, 4). Raises ConfigError when impossible."""
    s = (structure or "unstructured").strip().lower()
    if s in ("unstructured", "none", ""):
        return 0, 0
    m = _NM.match(s)
    if not m:
        raise ConfigError(f"Unknown structure '{structure}': use unstructured or N:M such as 2:4.")
    n, mm = int(m.group(1)), int(m.group(2))
    if n <= 0 or mm <= 0 or n >= mm:
        raise ConfigError(f"N:M structure needs 0 < N < M, got {n}:{mm}.")
    return n, mm


@dataclass(frozen=True)
class PruneConfig:
    """How to prune."""

    method: str = "wanda"
    """A registered method (``core/prune/methods/registry.py``): magnitude, wanda, sparsegpt, dsnot..."""
    sparsity: float = 0.5
    """Target fraction of zeros in every pruned module (the mean over blocks with OWL)."""
    structure: str = "unstructured"
    """``unstructured`` or ``N:M`` (N zeros in every M consecutive inputs)."""
    block_sparsity: tuple[float, ...] | None = None
    """Optional explicit sparsity per block (overrides ``sparsity``; OWL computes its own)."""
    owl: bool = False
    """Outlier-weighed layerwise sparsity (Yin et al., 2024) on top of the method."""
    owl_m: float = 5.0
    """OWL: a weight is an outlier when its Wanda score exceeds M times the block mean."""
    owl_lambda: float = 0.08
    """OWL: block sparsities range over target +/- lambda; with N:M, block N over N +/- lambda * M."""
    dsnot_init: str = "wanda"
    """DSnoT: the method that gives the initial mask (wanda, magnitude, sparsegpt: any registered
    method that refines none)."""
    dsnot_max_cycles: int = 50
    dsnot_threshold: float = 0.1
    dsnot_skip: str = "mlp"
    """DSnoT: modules left with their initial mask: ``mlp`` (the reference's default), ``attention``
    or ``none`` (refine every module)."""
    dsnot_rule: str = "reference"
    """DSnoT's swap rule: ``reference`` (swap while the error estimate exceeds the threshold, as
    the reference does) or ``decrease`` (only swaps that lower it; Prune Studio's earlier rule)."""
    sparsegpt_blocksize: int = 128
    sparsegpt_damp: float = 0.01
    """SparseGPT: dampening, as a fraction of the mean Hessian diagonal."""
    skip_modules: tuple[str, ...] = ()
    """Modules whose name contains one of these strings are left dense (e.g. ``down_proj``)."""
    batch_size: int = 8
    """Calibration samples per forward pass."""
    one_pass: bool | None = None
    """True: one forward pass per block; each module is pruned as soon as every batch has reached
    it, and the modules after it in the block see its pruned output ("true sequential"; see
    ``core/prune/lockstep.py``). False: the reference order, two passes per block (statistics of the
    dense block, then the pruned block's outputs), which reproduces the papers' code exactly.
    None (default): the method's own choice, :attr:`passes_once`."""
    offload: bool = True
    """Keep only the block being pruned (and its activations) on the compute device."""
    offload_to: str = "cpu"
    """Where the other blocks live when ``offload`` is on: ``cpu`` (host memory) or ``disk``
    (memory-mapped from the model's safetensors; pruned blocks are written to ``offload_dir``, so
    host memory holds about one block plus the activations: models larger than RAM)."""
    offload_dir: str | None = None
    """Disk offload: folder for the pruned blocks (default: a temporary folder in the cache)."""
    expert_min_tokens: int = 32
    """Mixture-of-experts models: an expert the router sends fewer calibration tokens than this is
    pruned with statistics from every token of its block (all tokens run through it), not from
    its few routed ones; 0: only an expert that received no token at all. See
    ``core/prune/experts.py``."""
    allow_partial: bool = False
    """Run even when some block weights a method would prune cannot be pruned (expert tensors in
    a layout this version does not know, such as Llama 4's) and stay dense; the report, card and history then say the
    result is partial. False: such a run is refused before any long step (``core/run/partial.py``)."""

    def __post_init__(self) -> None:
        methods.check(self)  # a registered method; DSnoT's initial mask one too
        if not (0.0 < float(self.sparsity) < 1.0):
            raise ConfigError(f"Sparsity must be between 0 and 1 (exclusive), got {self.sparsity}.")
        n, m = parse_structure(self.structure)
        if self.block_sparsity is not None:
            bs = tuple(float(x) for x in self.block_sparsity)
            if any(not (0.0 <= x < 1.0) for x in bs):
                raise ConfigError("Every per-block sparsity must be in [0, 1).")
            object.__setattr__(self, "block_sparsity", bs)
        if self.owl and not (0.0 <= self.owl_lambda < min(self.sparsity, 1 - self.sparsity) + 1e-9):
            raise ConfigError(
                f"OWL lambda {self.owl_lambda} is too large for sparsity {self.sparsity}: "
                "block sparsities would leave (0, 1)."
            )
        if self.owl and self.owl_m <= 0:
            raise ConfigError("OWL's outlier threshold M must be positive.")
        if self.dsnot_skip not in DSNOT_SKIPS:
            raise ConfigError(f"DSnoT's skip must be one of {', '.join(DSNOT_SKIPS)}, got '{self.dsnot_skip}'.")
        if self.dsnot_rule not in DSNOT_RULES:
            raise ConfigError(f"DSnoT's swap rule must be one of {', '.join(DSNOT_RULES)}, got '{self.dsnot_rule}'.")
        if self.dsnot_max_cycles < 0 or self.dsnot_threshold < 0:
            raise ConfigError("DSnoT's cycle limit and threshold must not be negative.")
        if self.sparsegpt_blocksize <= 0:
            raise ConfigError("SparseGPT's block size must be positive.")
        if not (0.0 <= self.sparsegpt_damp < 1.0):
            raise ConfigError("SparseGPT's dampening must be in [0, 1).")
        if int(self.expert_min_tokens) < 0:
            raise ConfigError("The minimum number of tokens per expert must not be negative.")
        if self.batch_size <= 0:
            raise ConfigError("The calibration batch size must be at least 1.")
        if self.offload_to not in OFFLOAD_TARGETS:
            raise ConfigError(f"Offload target must be {' or '.join(OFFLOAD_TARGETS)}, got '{self.offload_to}'.")
        object.__setattr__(self, "skip_modules", tuple(self.skip_modules))
        if n and m:
            object.__setattr__(self, "structure", f"{n}:{m}")
        else:
            object.__setattr__(self, "structure", "unstructured")

    @property
    def passes_once(self) -> bool:
        """Whether the run takes one pass per block: :attr:`one_pass`, or else the method's own
        default (``Method.one_pass``; a refinement takes that of the method it refines). Among the
        built-ins only SparseGPT's weight reconstruction (directly or as DSnoT's initial mask)
        defaults to one pass: its updates compensate for the pruned modules before them, and one
        pass matched or beat two here, while Wanda's 2:4 masks scored on already-pruned inputs
        lost 1-10% perplexity on each of four calibration draws (``bench/results/NOTES.md``)."""
        if self.one_pass is not None:
            return bool(self.one_pass)
        return methods.default_one_pass(self)

    @property
    def nm(self) -> tuple[int, int]:
        return parse_structure(self.structure)

    @property
    def offload_mode(self) -> str:
        """``none``, ``cpu`` or ``disk`` (the CLI's ``--offload``)."""
        return self.offload_to if self.offload else "none"

    def with_offload_mode(self, mode: str) -> "PruneConfig":
        """A copy with ``--offload MODE`` applied (``none``, ``cpu`` or ``disk``)."""
        if mode not in OFFLOAD_MODES:
            raise ConfigError(f"Offload must be one of {', '.join(OFFLOAD_MODES)}, got '{mode}'.")
        if mode == "none":
            return replace(self, offload=False)
        return replace(self, offload=True, offload_to=mode)

    @property
    def needs_calibration(self) -> bool:
        """Whether the method gathers statistics (magnitude does not) or OWL is on."""
        return methods.stats_needs(self) is not None or self.owl

    def label(self) -> str:
        """``wanda``, ``owl-sparsegpt``, ``dsnot[wanda]``: the method as reports name it."""
        return ("owl-" if self.owl else "") + methods.run_label(self)


@dataclass(frozen=True)
class CalibConfig:
    """Where calibration data comes from and how much of it."""

    source: str = "selfgen"
    """``selfgen`` (zero-data self-generation), ``selfgen:SOURCE`` (prefixes from SOURCE), a path,
    ``hf:NAME[:CONFIG[:SPLIT]]``, a preset name, or a saved set (.jsonl)."""
    nsamples: int = 64
    seqlen: int = 512
    seed: int = 0
    mode: str = "random"
    """Token-window convention for text sources: random (joined corpus) or document."""
    prefix_tokens: int = 2
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.2
    drop_top: float = 0.2
    """Self-generation: fraction of highest-perplexity samples dropped."""
    protocol: str = "windows"
    """Self-generation protocol: ``windows`` (every sample one window of ``seqlen`` tokens,
    end-of-text never sampled; zero-data with ``selfgen``) or ``paper`` (Ji et al.: 2-token
    prefixes from ``selfgen:SOURCE``, samples that may end at end-of-text, joined and cut into
    ``nsamples`` windows). See ``core/calib/selfgen/settings.py``."""

    def __post_init__(self) -> None:
        if self.protocol not in SELFGEN_PROTOCOLS:
            raise ConfigError(f"The self-generation protocol must be {' or '.join(SELFGEN_PROTOCOLS)}, "
                              f"got '{self.protocol}'.")
        if self.protocol == "paper" and self.source == "selfgen":
            raise ConfigError("The paper's self-generation protocol starts every sample with tokens of a real "
                              "text: choose a prefix source (selfgen:SOURCE), or the windows protocol for "
                              "zero-data generation.")
        if self.nsamples <= 0:
            raise ConfigError("The number of calibration samples must be at least 1.")
        if self.seqlen <= 1:
            raise ConfigError("The calibration sequence length must be at least 2 tokens.")
        if self.mode not in ("random", "document"):
            raise ConfigError("The sampling mode must be random or document.")
        if not (0.0 <= self.drop_top < 1.0):
            raise ConfigError("The fraction of samples dropped must be in [0, 1).")

    @property
    def is_selfgen(self) -> bool:
        return self.source == "selfgen" or self.source.startswith("selfgen:")

    @property
    def prefix_source(self) -> str | None:
        return self.source.split(":", 1)[1] if self.source.startswith("selfgen:") else None


@dataclass(frozen=True)
class Recipe:
    """Everything a headless run needs; saved and loaded as JSON (CLI ``--recipe``, GUI)."""

    model: str = "demo"
    prune: PruneConfig = field(default_factory=PruneConfig)
    calibration: CalibConfig = field(default_factory=CalibConfig)
    eval_ppl: tuple[str, ...] = ()
    eval_seqlen: int | None = None
    eval_max_windows: int | None = None
    """Evaluate perplexity on at most this many windows (None: the whole set, as the papers do)."""
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = "prunestudio-recipe"
        d["version"] = 1
        return d

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        if not isinstance(d, dict):
            raise ConfigError("A recipe must be a JSON object.")
        d = {k: v for k, v in d.items() if k not in ("format", "version")}
        prune = _build(PruneConfig, d.pop("prune", {}) or {})
        calib = _build(CalibConfig, d.pop("calibration", {}) or {})
        if "eval_ppl" in d:
            v = d["eval_ppl"]
            if not (v is None or isinstance(v, (str, list))) or (
                    isinstance(v, list) and not all(isinstance(x, str) for x in v)):
                raise ConfigError("The recipe's eval_ppl must be a source or a list of sources.")
            d["eval_ppl"] = (v,) if isinstance(v, str) else tuple(v or ())
        return _build(cls, {**d, "prune": prune, "calibration": calib})

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
            raise ConfigError(f"Could not read the recipe {Path(path).name}: {str(e)[:200]}") from e
        return cls.from_dict(data)


@dataclass(frozen=True)
class SettingsPreset:
    """A named set of sizes for calibration and evaluation, applied on top of a recipe (CLI
    ``--preset``, the app's Settings menu). The method, sparsity and sources stay as they are."""

    name: str
    label: str
    description: str
    nsamples: int
    seqlen: int
    mode: str
    """Calibration windows from text: ``random`` (from the joined corpus) or ``document`` (a crop
    of one document, the reference's C4 sampler)."""
    eval_ppl: tuple[str, ...]
    """Perplexity sets a run measures when the recipe names none."""
    eval_seqlen: int | None
    eval_max_windows: int | None
    zeroshot_limit: int | None
    """Zero-shot questions per task (None: every question)."""
    zeroshot_full: bool
    """The whole task sets: never a local subset file (HellaSwag's 1,000 items)."""

    def apply(self, recipe: Recipe) -> Recipe:
        """``recipe`` with this preset's sizes (its perplexity sets only where it names none)."""
        cal = replace(recipe.calibration, nsamples=self.nsamples, seqlen=self.seqlen, mode=self.mode)
        return replace(recipe, calibration=cal, eval_ppl=recipe.eval_ppl or self.eval_ppl,
                       eval_seqlen=self.eval_seqlen, eval_max_windows=self.eval_max_windows)


SETTINGS_PRESETS: dict[str, SettingsPreset] = {
    "cpu": SettingsPreset(
        "cpu", "CPU-sized defaults",
        "64 x 512-token calibration windows from the joined text, 512-token evaluation windows "
        "(the calibration's length), 100 questions per zero-shot task (the app's default)",
        nsamples=64, seqlen=512, mode="random", eval_ppl=(), eval_seqlen=None, eval_max_windows=None,
        zeroshot_limit=100, zeroshot_full=False),
    "paper": SettingsPreset(
        "paper", "Paper settings",
        "128 x 2048-token calibration windows, each a crop of one document (SparseGPT/Wanda's C4 "
        "sampler), WikiText-2 perplexity on every 2048-token window of the test set (C4: the "
        "papers' 256), every question of the whole zero-shot task sets",
        nsamples=128, seqlen=2048, mode="document", eval_ppl=("wikitext2",), eval_seqlen=2048,
        eval_max_windows=None, zeroshot_limit=None, zeroshot_full=True),
}


def settings_preset(name: str) -> SettingsPreset:
    """The preset called ``name``; ConfigError naming the presets otherwise."""
    if name not in SETTINGS_PRESETS:
        raise ConfigError(f"Unknown settings preset '{name}' (presets: {', '.join(SETTINGS_PRESETS)}).")
    return SETTINGS_PRESETS[name]


def _build(cls: type, d: dict[str, Any]) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"The {cls.__name__} settings of a recipe must be a JSON object.")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"Unknown {cls.__name__} setting(s): {', '.join(unknown)}.")
    d = dict(d)
    for key in ("block_sparsity", "skip_modules"):
        if key in d and isinstance(d[key], list):
            d[key] = tuple(d[key])
    for f in fields(cls):  # a value of the wrong JSON type is refused here, with its name
        if f.name in d and f.default is not MISSING and f.default is not None:
            d[f.name] = _typed(cls.__name__, f.name, f.default, d[f.name])
        elif f.name in d and f.default is None and d[f.name] is not None:  # "int | None" and the like
            kind = {"int": 0, "float": 0.0, "str": "", "bool": False}.get(str(f.type).split("|")[0].strip())
            if kind is not None:
                d[f.name] = _typed(cls.__name__, f.name, kind, d[f.name])
    try:
        return cls(**d)
    except (TypeError, ValueError, AttributeError, OverflowError) as e:  # wrong value types
        raise ConfigError(f"Bad {cls.__name__} settings: {str(e)[:200]}") from e


def _typed(where: str, name: str, default: Any, value: Any) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        kind = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "a string"}
        raise ConfigError(f"The {where} setting '{name}' must be {kind[type(default).__name__]}, "
                          f"got {value!r:.60}.")
    return value
