"""Loading a model to prune: a Hugging Face folder, a single GGUF file, a hub id, or ``demo``.

Safe by default: ``trust_remote_code`` is off unless the caller asks for it, safetensors are
preferred, and pickled ``.bin`` weights are only read with ``torch.load(weights_only=True)``.
The model is loaded on the CPU; the pipeline moves one block at a time to the compute device.
"""

from __future__ import annotations

import json
import os
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import architecture
from .devices import dtype_name, resolve_device, resolve_dtype
from .errors import ModelLoadError

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
    for block in lay.blocks:
        for name in lay.module_names:
            prunable += block.get_submodule(name).weight.numel()
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
    }


def _max_context(cfg: Any) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _wrap(e: BaseException, what: str) -> ModelLoadError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = f"{what}: {msg}"
    low = text.lower()
    if "trust_remote_code" in low or "custom code" in low:
        return ModelLoadError(
            f"{what}: this model needs its own Python code from the model folder, which Prune "
            "Studio does not run by default.",
            hint="Only if you trust its author, enable 'trust remote code' (CLI: --trust-remote-code).",
            details=traceback.format_exc(),
        )
    if "does not recognize this architecture" in low or "unrecognized" in low or "model_type" in low:
        return ModelLoadError(
            f"{what}: this installation of transformers does not know the model's architecture.",
            details=traceback.format_exc(),
        )
    if "weights_only" in low or "unpickl" in low:
        return ModelLoadError(
            f"{what}: the pickled .bin weights contain more than plain tensors and were refused "
            "for safety (torch.load with weights_only=True failed). Convert them to safetensors.",
            details=traceback.format_exc(),
        )
    return ModelLoadError(text, details=traceback.format_exc())


def _strip_quantization(config: Any) -> Any:
    if hasattr(config, "quantization_config"):
        try:
            delattr(config, "quantization_config")
        except AttributeError:
            config.quantization_config = None
    return config


def load_gguf_as_plain(gguf: Path, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load a GGUF file through transformers and rebuild it as an ordinary (non-quantised) model.

    transformers marks GGUF-loaded models as quantised and refuses ``save_pretrained``; rebuilding
    from the config and loading the dequantised state dict gives a normal model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    try:
        import gguf as _gguf  # noqa: F401
    except ImportError as e:  # pragma: no cover - gguf is a dependency
        raise ModelLoadError("Reading GGUF files needs the 'gguf' package.") from e
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as e:  # transformers raises many types for unsupported GGUF files
        raise _wrap(e, f"Could not read GGUF file {gguf.name}") from e
    config = _strip_quantization(loaded.config)
    state = loaded.state_dict()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(state, assign=True, strict=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = loaded.generation_config
    del loaded
    _fix_rotary_buffers(model)
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.is_meta:
            raise ModelLoadError(f"GGUF file {gguf.name} has no tensor for {name}.")
    model.eval()
    return model, tokenizer


def _fix_rotary_buffers(model: Any) -> None:
    """Rebuild non-persistent buffers (rotary ``inv_freq``) left on the meta device.

    Modules built on the meta device keep meta buffers that no state dict carries; re-creating
    such a module from its config on the CPU gives the right values, whatever its rope type.
    """
    for mod in model.modules():
        meta = [n for n, b in mod.named_buffers(recurse=False) if b.is_meta]
        if not meta or not hasattr(mod, "config"):
            continue
        fresh = type(mod)(mod.config)
        for n in meta:
            setattr(mod, n, getattr(fresh, n))
        for attr in ("attention_scaling",):
            if hasattr(fresh, attr):
                setattr(mod, attr, getattr(fresh, attr))


def _check_folder(path: Path) -> None:
    if not (path / "config.json").exists():
        raise ModelLoadError(
            f"The folder {path.name} has no config.json, so it is not a Hugging Face model folder."
        )
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"config.json in {path.name} is not valid JSON: {e}") from e
    weights = list(path.glob("*.safetensors")) + list(path.glob("pytorch_model*.bin"))
    if not weights:
        raise ModelLoadError(f"The folder {path.name} has a config.json but no weight files "
                             "(*.safetensors or pytorch_model*.bin).")
    for st in path.glob("*.safetensors"):
        _check_safetensors(st)


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
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise ValueError(f"{size} bytes on disk but the header describes {8 + n + end}")
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ModelLoadError(
            f"The weight file {path.name} is truncated or corrupt ({e}); download it again."
        ) from e


def resolve_spec(spec: str, trust_remote_code: bool = False) -> tuple[Path | None, str | None, str]:
    """Turn what the user typed into (local folder, gguf file name, display name)."""
    if spec == "demo":
        from .demo_model import DEMO_NAME, ensure_demo_model

        return ensure_demo_model(), None, f"demo ({DEMO_NAME})"
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
        return _download_hub(spec), None, spec
    raise ModelLoadError(f"Model not found: {spec} is neither an existing path nor a hub id (owner/name).")


def _download_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass  # not cached: download below
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:
        raise ModelLoadError(
            f"Could not download {repo_id} from the Hugging Face hub and it is not in the local "
            "cache (offline, a private model without a token, or a wrong id).",
            details=f"{type(e).__name__}: {e}",
        ) from e


def load_model(
    spec: str,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer on the CPU, ready for layer-wise pruning."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    folder, gguf_name, name = resolve_spec(spec, trust_remote_code)
    assert folder is not None
    if gguf_name is not None:
        model, tokenizer = load_gguf_as_plain(folder / gguf_name, dtype=dt)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(folder), dtype=dt, trust_remote_code=trust_remote_code, low_cpu_mem_usage=True,
            )
        except Exception as e:
            raise _wrap(e, f"Could not load the model in {folder.name}") from e
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        except Exception as e:
            raise _wrap(e, f"Could not load the tokenizer in {folder.name}") from e
    model.eval()
    info = describe(model)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, spec=spec, path=folder,
                       device=dev, dtype=dt, info=info)
