"""What kind of model this is, and which part of it Prune Studio prunes.

Three kinds, read from the model's configuration:

- ``decoder``: a decoder-only language model (Llama, Qwen3, Gemma 3 text, GPT-2, ...). Its decoder
  blocks are searched for in the whole model.
- ``multimodal``: a language model with encoders of other inputs (a vision-language model such as
  LLaVA, Gemma 3, Qwen2-VL / Qwen2.5-VL, Mistral 3; or an audio-language model). Only the language
  model's decoder blocks are pruned; the vision tower (or audio encoder) and the projector stay
  dense. Calibration and evaluation feed text only, which these models accept.
- ``encoder-decoder`` (T5, BART, Whisper, ...): refused with one sentence. Their two stacks
  and cross-attention need a calibration of both sides that Prune Studio does not do.

The language model of a multimodal model is the module whose ``config`` is the configuration's
text part (transformers builds it from ``config.text_config``); a model whose own configuration is
the text part (e.g. Phi-4-multimodal) has its modality encoders found the same way and left out.
When neither is found the model is refused rather than risk pruning its vision tower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from torch import nn

from ..errors import ModelLoadError

__all__ = ["DECODER", "ENCODER_DECODER", "MULTIMODAL", "ModelKind", "auto_class", "check_supported",
           "kind_of", "language_modules", "text_config"]

DECODER = "decoder"
MULTIMODAL = "multimodal"
ENCODER_DECODER = "encoder-decoder"

_MODALITY_WORDS = ("vision", "visual", "image", "audio", "speech", "video")
_PART_NAMES = (("vision", "vision tower"), ("visual", "vision tower"), ("image", "image encoder"),
               ("video", "video encoder"), ("audio", "audio encoder"), ("speech", "speech encoder"))


@dataclass(frozen=True)
class ModelKind:
    """A model's kind, the name it is shown by, and the parts that are not pruned."""

    kind: str  # DECODER, MULTIMODAL or ENCODER_DECODER
    architecture: str  # e.g. "LlavaForConditionalGeneration", or the model type when unknown
    other_parts: tuple[str, ...] = ()  # multimodal: "vision tower", "audio encoder", ...

    @property
    def pruned_part(self) -> str | None:
        """What a run prunes, in words, for a model that is more than a language model."""
        if self.kind != MULTIMODAL:
            return None
        parts = list(dict.fromkeys(self.other_parts))
        if not parts:
            return "language model"
        rest = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"language model (the {rest} {'stays' if len(parts) == 1 else 'stay'} dense)"

    def refusal(self) -> str | None:
        """The one sentence that refuses this model, or None when it can be pruned."""
        if self.kind == ENCODER_DECODER:
            return (f"{self.architecture} is an encoder-decoder model; Prune Studio prunes decoder-only "
                    "language models (and the language model of a vision-language model).")
        return None


def text_config(config: Any) -> Any:
    """The configuration of the language model that produces text: ``config`` itself for a decoder."""
    try:
        return config.get_text_config(decoder=True)
    except (AttributeError, ValueError):  # not a transformers config, or an ambiguous composite one
        return config


def _modality_configs(config: Any) -> dict[str, Any]:
    """The sub-configurations that describe encoders of other inputs (vision, audio, ...)."""
    text = text_config(config)
    out = {}
    for key in getattr(config, "sub_configs", None) or {}:
        sub = getattr(config, key, None)
        if sub is None or sub is text:
            continue
        if any(w in key.lower() for w in _MODALITY_WORDS) or text is not config:
            out[key] = sub
    return out


def _part_name(key: str) -> str:
    low = key.lower()
    for word, name in _PART_NAMES:
        if word in low:
            return name
    return key.removesuffix("_config").replace("_", " ")


def kind_of(config: Any, architecture: str | None = None) -> ModelKind:
    """The :class:`ModelKind` of a model with ``config`` (a transformers configuration).

    ``architecture`` names it in messages; by default the configuration's first architecture."""
    archs = getattr(config, "architectures", None) or ()
    name = architecture or (archs[0] if archs else f"This {getattr(config, 'model_type', None) or 'model'} model")
    text = text_config(config)
    if getattr(config, "is_encoder_decoder", False) or getattr(text, "is_encoder_decoder", False):
        return ModelKind(ENCODER_DECODER, name)
    modality = _modality_configs(config)
    if text is config and not modality:
        return ModelKind(DECODER, name)
    return ModelKind(MULTIMODAL, name, tuple(_part_name(k) for k in modality))


def check_supported(config: Any) -> ModelKind:
    """``kind_of(config)``, or :class:`ModelLoadError` with its one sentence when it is refused."""
    kind = kind_of(config)
    reason = kind.refusal()
    if reason:
        raise ModelLoadError(reason)
    return kind


def auto_class(config: Any) -> Any:
    """The transformers auto class that loads the whole model of ``config``.

    ``AutoModelForCausalLM`` for decoders. A multimodal model is loaded whole, vision tower
    included, so that the export is the same kind of model: ``AutoModelForImageTextToText`` when
    it knows the model type (for Llama 4, Mllama or Qwen3.5 ``AutoModelForCausalLM`` would build
    the language model alone), else ``AutoModelForMultimodalLM``, else ``AutoModelForCausalLM``
    (which also reads ``auto_map`` for models defined by their own code)."""
    import transformers
    from transformers.models.auto import modeling_auto as ma

    if kind_of(config).kind == MULTIMODAL:
        model_type = getattr(config, "model_type", None)
        for cls_name, mapping in (("AutoModelForImageTextToText", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"),
                                  ("AutoModelForMultimodalLM", "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES")):
            if model_type in getattr(ma, mapping, {}) and hasattr(transformers, cls_name):
                return getattr(transformers, cls_name)
    return transformers.AutoModelForCausalLM


def language_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``model.named_modules()`` restricted to its language model, names relative to ``model``.

    The whole model for a decoder; the language model's subtree for a multimodal model (or the
    model without its modality encoders when the model is its own language model). Raises
    :class:`ModelLoadError` for an encoder-decoder model, and for a multimodal model whose
    language model cannot be told apart from the rest."""
    config = getattr(model, "config", None)
    if config is None:
        yield from model.named_modules()
        return
    kind = kind_of(config, type(model).__name__)
    if kind.refusal():
        raise ModelLoadError(kind.refusal() or "")
    if kind.kind == DECODER:
        yield from model.named_modules()
        return
    text = text_config(config)
    if text is not config:
        roots = [(n, m) for n, m in model.named_modules() if n and getattr(m, "config", None) is text]
        if not roots:
            raise _unseparable(kind)
        prefix, root = min(roots, key=lambda nm: nm[0].count("."))
        for n, m in root.named_modules():
            yield (f"{prefix}.{n}" if n else prefix), m
        return
    others = {id(c) for c in _modality_configs(config).values()}
    skipped = [n for n, m in model.named_modules() if n and id(getattr(m, "config", None)) in others]
    if not skipped:
        raise _unseparable(kind)
    for n, m in model.named_modules():
        if not any(n == s or n.startswith(s + ".") for s in skipped):
            yield n, m


def _unseparable(kind: ModelKind) -> ModelLoadError:
    return ModelLoadError(
        f"{kind.architecture} combines a language model with a {', '.join(kind.other_parts) or 'other part'}, "
        "and Prune Studio cannot tell which modules belong to the language model, so it does not prune it.")
