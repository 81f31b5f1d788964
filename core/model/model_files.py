"""The files of a model folder besides its weights: what a hub download fetches, and what an
export carries over from the folder the model was loaded from.

A model is more than ``config.json`` and its weights: the tokenizer (``tokenizer.json``,
``tokenizer_config.json``, ``special_tokens_map.json``, ``tokenizer.model`` / ``vocab.*`` /
``merges.txt``, ``added_tokens.json``), the chat template (transformers 5 keeps it in
``chat_template.jinja``, extra ones in ``additional_chat_templates/``), ``generation_config.json``,
and for a vision-language model the processor's settings (``preprocessor_config.json``,
``processor_config.json``). A model defined by its own code also needs its ``*.py`` files; those
are fetched and carried only when the user trusts remote code, never otherwise.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SOURCE_ATTR", "SourceFiles", "carried_files", "hub_patterns", "remember_source", "source_of"]

_WEIGHTS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
"""The safetensors names transformers loads (not e.g. Mistral's duplicate ``consolidated.safetensors``)."""

_COMPANIONS = (
    "config.json",
    "generation_config.json",
    "tokenizer*",  # tokenizer.json, tokenizer_config.json, tokenizer.model, tokenizer.tiktoken, ...
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",  # vocab.json, vocab.txt
    "merges.txt",
    "*.model",  # sentencepiece: spiece.model, sentencepiece.bpe.model, ...
    "*.tiktoken",
    "tekken.json",  # Mistral's tokenizer
    "chat_template.jinja",
    "chat_template.json",
    "additional_chat_templates/*.jinja",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "LICENSE*",  # a derivative's licence terms travel with it
    "NOTICE*",
    "USE_POLICY*",
)
"""Everything but weights and code that a model folder may need to be used as its author meant."""

_CODE = ("*.py",)


def hub_patterns(trust_remote_code: bool) -> list[str]:
    """``allow_patterns`` for downloading a model from the hub: weights, every JSON file (small,
    and a tokenizer or processor may need one not listed here), the other companions, and the
    model's Python files only when remote code is trusted."""
    return [*_WEIGHTS, "*.json", *_COMPANIONS, *(_CODE if trust_remote_code else ())]


def _matches(rel: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


def carried_files(folder: Path, trust_remote_code: bool) -> list[str]:
    """The companion files of ``folder`` (relative POSIX paths, sorted) an export copies when it
    does not write them itself; ``*.py`` only when remote code is trusted. Weights, their index
    and ``config.json`` are never carried (the export writes its own), nor JSON files not named
    here (an ``adapter_config.json`` would make the export look like an adapter)."""
    patterns = _COMPANIONS + (_CODE if trust_remote_code else ())
    candidates = [*folder.glob("*"), *folder.glob("additional_chat_templates/*")]
    out = []
    for p in candidates:
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != "config.json" and _matches(rel, patterns):  # is_file follows links
            out.append(rel)
    return sorted(out)


@dataclass(frozen=True)
class SourceFiles:
    """Where a loaded model's files are, and whether its code may be carried along."""

    folder: Path
    trust_remote_code: bool = False

    def carried(self) -> list[str]:
        return carried_files(self.folder, self.trust_remote_code) if self.folder.is_dir() else []


SOURCE_ATTR = "_prunestudio_source_files"


def remember_source(model: Any, folder: Path | None, trust_remote_code: bool) -> None:
    """Record on ``model`` the folder it was loaded from (read back by :func:`source_of`)."""
    if folder is not None:
        setattr(model, SOURCE_ATTR, SourceFiles(Path(folder), trust_remote_code))


def source_of(model: Any) -> SourceFiles | None:
    """The :class:`SourceFiles` recorded by :func:`remember_source`, or None."""
    src = getattr(model, SOURCE_ATTR, None)
    return src if isinstance(src, SourceFiles) else None
