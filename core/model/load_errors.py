"""Turning a failed model load into a message a user can act on (one place for every loader)."""

from __future__ import annotations

import pickle
import re
import traceback

from ..errors import ModelLoadError

__all__ = ["REMOTE_CODE_HINT", "explain_load_error", "gguf_architectures", "transformers_version"]


def explain_load_error(e: BaseException, what: str) -> ModelLoadError:
    """A :class:`ModelLoadError` that says why loading failed (``what``: the step), from the
    exception transformers or torch raised; the traceback goes in its details."""
    low = str(e).lower()
    known = _diagnose(e, low)
    if known is None:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return ModelLoadError(f"{what}: {msg}", details=traceback.format_exc())
    reason, hint = known
    return ModelLoadError(f"{what}: {reason}", hint=hint, details=traceback.format_exc())


def _diagnose(e: BaseException, low: str) -> tuple[str, str] | None:
    """(reason, hint) for the failures users meet, from the exception and its lower-case text."""
    if isinstance(e, pickle.UnpicklingError) or "weights only load failed" in low or "weights_only" in low:
        return ("the pickled .bin weights contain more than plain tensors and were refused for safety "
                "(torch.load with weights_only=True failed).",
                "Convert them to safetensors with a tool you trust, or use a safetensors copy of the model.")
    if "trust_remote_code" in low or "custom code" in low:
        return ("this model needs its own Python code from the model folder, which Prune Studio does "
                "not run by default.", REMOTE_CODE_HINT)
    gguf_arch = re.search(r"gguf model with architecture (\S+) is not supported", low)
    if gguf_arch:
        return (f"transformers {transformers_version()} cannot read GGUF models of the "
                f"'{gguf_arch.group(1)}' architecture (it reads {gguf_architectures()}).",
                "Use the model's Hugging Face folder (safetensors) instead.")
    if "ignore_mismatched_sizes" in low or "size mismatch" in low:
        return ("the weights do not have the shapes its configuration describes (a broken conversion, "
                "or files of two different models).", "")
    if "does not recognize this architecture" in low or "unrecognized" in low or "model_type" in low:
        return (f"this installation of transformers ({transformers_version()}) does not know the "
                "model's architecture.", "Upgrade transformers, or use a model of a supported architecture.")
    return None


REMOTE_CODE_HINT = (
    "Only if you trust its author, allow it with --trust-remote-code (CLI) or the 'trust remote "
    "code' option (app): the model's Python files then run on this machine with your rights."
)


def transformers_version() -> str:
    try:
        import transformers

        return transformers.__version__
    except Exception:  # pragma: no cover
        return "?"


def gguf_architectures() -> str:
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        return ", ".join(sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")))
    except Exception:  # pragma: no cover
        return "a fixed list of architectures"
