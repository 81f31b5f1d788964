"""Reading a GGUF file as an ordinary transformers model (weights dequantised by transformers)."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from .load_errors import explain_load_error
from .meta_buffers import rebuild_meta_buffers

__all__ = ["check_gguf", "load_gguf_as_plain"]


def check_gguf(path: Path) -> None:
    """A readable GGUF header: the magic bytes and metadata parse (catches truncated files)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelLoadError(f"Could not read {path.name}: {e.strerror or e}.") from e
    if magic != b"GGUF":
        raise ModelLoadError(f"{path.name} is not a GGUF file (it does not start with the GGUF signature).")
    try:
        from gguf import GGUFReader

        GGUFReader(str(path))
    except ImportError:  # pragma: no cover - gguf is a dependency
        return
    except Exception as e:  # the reader raises ValueError, struct errors, IndexError ... on junk
        raise ModelLoadError(
            f"The GGUF file {path.name} is truncated or corrupt ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}); download it again.",
            details=traceback.format_exc(),
        ) from e


def _strip_quantization(config: Any) -> Any:
    if hasattr(config, "quantization_config"):
        try:
            delattr(config, "quantization_config")
        except AttributeError:
            config.quantization_config = None
    return config


def _copy_meta_buffers(model: Any, source: Any) -> None:
    """Give ``model``'s meta buffers the values of ``source``'s buffers of the same name.

    Non-persistent buffers (Gemma 3's ``embed_scale``, rotary ``inv_freq``) are in no state dict;
    the GGUF-loaded model has them with their real values, whatever module holds them.
    """
    have = dict(source.named_buffers())
    for name, buf in list(model.named_buffers()):
        if buf.is_meta and name in have and not have[name].is_meta:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, attr, have[name].detach().clone())


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
    check_gguf(gguf)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as e:  # transformers raises many types for unsupported GGUF files
        raise explain_load_error(e, f"Could not read GGUF file {gguf.name}") from e
    config = _strip_quantization(loaded.config)
    state = loaded.state_dict()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(state, assign=True, strict=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = loaded.generation_config
    _copy_meta_buffers(model, loaded)
    del loaded
    rebuild_meta_buffers(model)
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.is_meta:
            raise ModelLoadError(f"GGUF file {gguf.name} has no tensor for {name}.")
    model.eval()
    return model, tokenizer
