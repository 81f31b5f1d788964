"""Loading a model to prune: a Hugging Face folder, a single GGUF file, a hub id, or ``demo``.

Safe by default: ``trust_remote_code`` is off unless the caller asks for it, safetensors are
preferred, and pickled ``.bin`` weights are only read with ``torch.load(weights_only=True)``.
A vision-language model is loaded whole (its language model is what gets pruned) and an
encoder-decoder model is refused (:mod:`.kinds`). The folder is remembered on the model so that
an export carries the files it needs besides its weights (:mod:`.model_files`).
The model is loaded on the CPU; the pipeline moves one block at a time to the compute device.
"""

from __future__ import annotations

import json
import os
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import Cancelled, ModelLoadError
from . import architecture, kinds
from .devices import dtype_name, resolve_device, resolve_dtype
from .gguf import load_gguf_as_plain
from .load_errors import REMOTE_CODE_HINT, explain_load_error, transformers_version
from .model_files import hub_patterns, remember_source

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel
    tokenizer: Any
    name: str  # for display and reports: "demo (SmolLM2-135M-Instruct)", folder name or hub id
    spec: str  # what the user asked for
    path: Path | None  # local folder holding config/weights, when there is one
    device: torch.device  # compute device for the pipeline
    dtype: torch.dtype
    info: dict[str, Any] = field(default_factory=dict)


def describe(model: Any) -> dict[str, Any]:
    """Architecture facts shown in the GUI and written into reports."""
    cfg = model.config
    lay = architecture.layout(model)
    n_params = sum(p.numel() for p in model.parameters())
    prunable = 0
    for bi, block in enumerate(lay.blocks):
        for name in lay.names_of(bi):  # each block's own modules (hybrid blocks differ)
            prunable += architecture.weight_numel(block, name)
    # mixture-of-experts: names standing for every expert's matrix (mlp.experts[*].down_proj) and
    # how many experts each stands for, and the experts each token is routed to
    counts = _expert_counts(lay)
    moe = {"expert_counts": counts, "experts_per_token": getattr(cfg, "num_experts_per_tok", None)} if counts else {}
    return {
        "architecture": type(model).__name__,
        "model_type": getattr(cfg, "model_type", ""),
        "parameters": n_params,
        "prunable_parameters": prunable,
        "blocks": len(lay.blocks),
        "blocks_path": lay.path,
        "modules_per_block": list(lay.module_names),
        "hidden_size": getattr(cfg, "hidden_size", getattr(cfg, "n_embd", None)),
        "max_context": _max_context(cfg),
        "dtype": dtype_name(next(model.parameters()).dtype),
        **moe,
    }


def _expert_counts(lay: architecture.BlockLayout) -> dict[str, int]:
    counts: dict[str, int] = {}
    for bi, block in enumerate(lay.blocks):
        for name in lay.names_of(bi):
            c = architecture.copies(block, name)
            if c > 1:
                counts[name] = max(counts.get(name, 0), c)
    return counts


def _max_context(cfg: Any) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _check_folder(path: Path) -> None:
    if not (path / "config.json").exists():
        raise ModelLoadError(
            f"The folder {path.name} has no config.json, so it is not a Hugging Face model folder."
        )
    _read_config(path)
    weights = list(path.glob("*.safetensors")) + list(path.glob("pytorch_model*.bin"))
    if not weights:
        raise ModelLoadError(f"The folder {path.name} has a config.json but no weight files "
                             "(*.safetensors or pytorch_model*.bin).")
    for st in path.glob("*.safetensors"):
        _check_safetensors(st)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ModelLoadError(f"config.json in {path.name} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"config.json in {path.name} is not a JSON object, so it is not a model configuration.")
    return cfg


def _check_config(path: Path, trust_remote_code: bool) -> None:
    """Refuse, with the reason, what transformers would refuse or misread: no or an unknown
    ``model_type``, or custom code (``auto_map``) that is not allowed to run."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    cfg = _read_config(path)
    model_type = cfg.get("model_type")
    auto_map = cfg.get("auto_map")
    known = isinstance(model_type, str) and model_type in CONFIG_MAPPING_NAMES
    if known:
        return  # transformers' own class is used; shipped custom code is ignored without trust
    if auto_map and not trust_remote_code:
        raise ModelLoadError(
            f"The model in {path.name} (model type '{model_type}') is defined by Python code shipped "
            "with it (auto_map in config.json), which Prune Studio does not run by default.",
            hint=REMOTE_CODE_HINT,
        )
    if auto_map:
        return  # trusted custom code: transformers loads it
    if not model_type:
        raise ModelLoadError(
            f"config.json in {path.name} has no model_type, so the model's architecture is unknown."
        )
    raise ModelLoadError(
        f"The model in {path.name} has the architecture '{model_type}', which this installation of "
        f"transformers ({transformers_version()}) does not know.",
        hint="Upgrade transformers, or use a model of a supported architecture.",
    )


def _check_safetensors(path: Path) -> None:
    """Read the header and compare the declared size with the file: catches truncated downloads."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file shorter than its header")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > size - 8:
                raise ValueError("header length is impossible")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        end = 0
        for k, v in header.items():
            if k == "__metadata__":
                continue
            offsets = v.get("data_offsets") if isinstance(v, dict) else None
            if (not isinstance(offsets, list) or len(offsets) != 2
                    or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                    or not 0 <= offsets[0] <= offsets[1]):
                raise ValueError(f"tensor {str(k)[:60]!r} has no valid data_offsets")
            end = max(end, offsets[1])
        if 8 + n + end > size:
            raise ValueError(f"{size} bytes on disk but the header describes {8 + n + end}")
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise ModelLoadError(
            f"The weight file {path.name} is truncated or corrupt ({e}); download it again."
        ) from e


def resolve_spec(spec: str, trust_remote_code: bool = False,
                 should_stop: Callable[[], bool] | None = None) -> tuple[Path | None, str | None, str]:
    """Turn what the user typed into (local folder, gguf file name, display name).

    A catalogue name (``demo``, ``gemma3-270m``, ...: :mod:`.catalog`) is fetched first when
    needed (``should_stop`` can cancel that download)."""
    from .catalog import CATALOG, ensure_model

    if spec in CATALOG:
        return ensure_model(spec, should_stop or (lambda: False)), None, f"{spec} ({CATALOG[spec].display})"
    p = Path(os.path.expanduser(spec))
    if p.is_file():
        if p.suffix.lower() == ".gguf":
            return p.parent, p.name, p.name
        if p.name == "config.json":
            _check_folder(p.parent)
            return p.parent, None, p.parent.name
        raise ModelLoadError(f"{p.name} is not a model: pick a model folder or a .gguf file.")
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if not (p / "config.json").exists() and len(ggufs) == 1:
            return p, ggufs[0].name, ggufs[0].name
        _check_folder(p)
        return p, None, p.name
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return _download_hub(spec, trust_remote_code), None, spec
    raise ModelLoadError(f"Model not found: {spec} is neither an existing path nor a hub id (owner/name).")


def _download_hub(repo_id: str, trust_remote_code: bool = False) -> Path:
    """The local snapshot of ``repo_id``: its weights and every file the model needs besides them
    (tokenizer, chat template, generation config, processor settings; its ``*.py`` only when
    remote code is trusted; see :mod:`model_files`). The hub is asked first, so that a snapshot
    cached by an older download gains the files it lacks; offline, the cached snapshot is used."""
    import huggingface_hub

    patterns = hub_patterns(trust_remote_code)
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns))
    except Exception:
        pass  # offline or refused: the local cache below
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception as e:
        raise ModelLoadError(
            f"Model not found: {repo_id} is not a local folder, and it could not be downloaded from "
            "the Hugging Face hub nor found in the local cache (offline, a private model without a "
            "token, or a wrong id).",
            details=f"{type(e).__name__}: {e}",
        ) from e


def load_model(
    spec: str,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    should_stop: Callable[[], bool] | None = None,
    offload: str = "cpu",
    offload_dir: str | None = None,
) -> LoadedModel:
    """Load a causal LM (or a vision-language model) and its tokenizer on the CPU, ready for
    layer-wise pruning.

    ``offload="disk"`` reads only what lies outside the decoder blocks; the blocks stay in the
    safetensors files until used (see :mod:`offload`), so the model may be larger than RAM.

    ``should_stop`` is checked between the steps (finding or downloading the files, reading the
    weights, reading the tokenizer); a step itself is not interrupted, so a cancel takes effect
    when the step in progress ends. Raises :class:`Cancelled` then.
    """
    from transformers import AutoTokenizer

    def check_stop() -> None:
        if should_stop is not None and should_stop():
            raise Cancelled()

    check_stop()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    folder, gguf_name, name = resolve_spec(spec, trust_remote_code, should_stop)
    assert folder is not None
    check_stop()
    if offload == "disk":
        if gguf_name is not None:
            raise ModelLoadError("Disk offload reads safetensors folders; a GGUF file must be "
                                 "dequantised in memory.", hint="Use offload cpu for GGUF models.")
        from .offload import load_model_lazy

        _check_config(folder, trust_remote_code)
        _model_class(folder, trust_remote_code)  # refuses what is not pruned (encoder-decoders)
        model = load_model_lazy(folder, dt, trust_remote_code, offload_dir)
        check_stop()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        except Exception as e:
            raise explain_load_error(e, f"Could not load the tokenizer in {folder.name}") from e
        check_stop()
    elif gguf_name is not None:
        model, tokenizer = load_gguf_as_plain(folder / gguf_name, dtype=dt)
        check_stop()
    else:
        _check_config(folder, trust_remote_code)
        auto = _model_class(folder, trust_remote_code)
        try:
            model, loading = auto.from_pretrained(
                str(folder), dtype=dt, trust_remote_code=trust_remote_code, low_cpu_mem_usage=True,
                weights_only=True, output_loading_info=True,
            )
        except Exception as e:
            raise explain_load_error(e, f"Could not load the model in {folder.name}") from e
        missing = sorted(loading.get("missing_keys") or ())
        if missing:
            raise ModelLoadError(
                f"The weights in {folder.name} do not match its config.json: {len(missing)} tensors "
                f"are missing (e.g. {', '.join(missing[:3])}), so they would be random.",
                hint="The files may belong to another model or be an incomplete download.",
            )
        check_stop()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        except Exception as e:
            if not any((folder / f).exists() for f in _TOKENIZER_FILES):
                raise ModelLoadError(
                    f"The folder {folder.name} has no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...).",
                    hint="Copy the tokenizer files of the original model into it.",
                    details=traceback.format_exc(),
                ) from e
            raise explain_load_error(e, f"Could not load the tokenizer in {folder.name}") from e
        check_stop()
    if gguf_name is None:
        remember_source(model, folder, trust_remote_code)  # the export carries its tokenizer files, ...
    model.eval()
    info = {**describe(model), **_kind_facts(model)}
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, spec=spec, path=folder,
                       device=dev, dtype=dt, info=info)


def _model_class(folder: Path, trust_remote_code: bool) -> Any:
    """The transformers auto class that loads the model in ``folder`` whole (see
    :func:`kinds.auto_class`); :class:`ModelLoadError` with one sentence for a model that Prune
    Studio does not prune (an encoder-decoder)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except Exception as e:
        raise explain_load_error(e, f"Could not read the configuration in {folder.name}") from e
    kinds.check_supported(config)
    return kinds.auto_class(config)


def _kind_facts(model: Any) -> dict[str, Any]:
    """For a model that is more than a language model: its kind, the part that is pruned, and the
    language model's width and context (the top configuration may not carry them)."""
    kind = kinds.kind_of(model.config, type(model).__name__)
    if kind.kind == kinds.DECODER:
        return {}
    text = kinds.text_config(model.config)
    facts: dict[str, Any] = {"kind": kind.kind, "pruned_part": kind.pruned_part,
                             "loads_with": kinds.auto_class(model.config).__name__}
    if getattr(text, "hidden_size", None) is not None:
        facts["hidden_size"] = text.hidden_size
    if _max_context(text) is not None:
        facts["max_context"] = _max_context(text)
    return facts


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json",
                    "spiece.model", "vocab.txt")
