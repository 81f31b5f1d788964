"""A Modelfile for Ollama beside an exported model, and the command that imports it.

Ollama imports a folder of safetensors weights itself (``FROM <folder>`` in a Modelfile, then
``ollama create NAME -f Modelfile``), for the architectures its converter knows
(:data:`OLLAMA_ARCHITECTURES`); any other architecture has to be converted to GGUF with
llama.cpp first, and the Modelfile says so.

The chat template: Ollama's TEMPLATE is a Go template, the model's a Jinja template, and no
general translation between them exists. :func:`convert_chat_template` therefore only recognises
a few common prompt formats (ChatML, Llama 3, Phi-3) and accepts one only when the model's own
Jinja template, rendered on a few probe conversations, gives exactly the text the Ollama template
gives (a default system prompt the Jinja template adds becomes the Modelfile's SYSTEM). Otherwise
the Modelfile has no TEMPLATE and says why in a comment: Ollama then picks the closest of its own
templates to the chat template in the folder, as it does for any imported model.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ExportError
from ..files import atomic_write_text

MODELFILE_NAME = "Modelfile"

# The Hugging Face architectures (config.json "architectures"[0]) that Ollama's safetensors
# importer converts: the cases of convert/convert.go in github.com/ollama/ollama (2025-26), with
# MistralForCausalLM, which its import guide names and earlier versions convert as Llama. Encoder
# models (BERT) are left out: they are not language models Prune Studio prunes.
OLLAMA_ARCHITECTURES = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "MllamaForConditionalGeneration",
    "Llama4ForConditionalGeneration", "Mistral3ForConditionalGeneration", "Ministral3ForCausalLM",
    "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration",
    "Gemma3nForConditionalGeneration", "Phi3ForCausalLM", "Qwen2ForCausalLM",
    "Qwen2_5_VLForConditionalGeneration", "Qwen3VLForConditionalGeneration",
    "Qwen3VLMoeForConditionalGeneration", "Olmo3ForCausalLM", "CohereForCausalLM", "GptOssForCausalLM",
    "DeepseekV3ForCausalLM", "Glm4MoeLiteForCausalLM", "Lfm2ForCausalLM",
})


@dataclass(frozen=True)
class PromptFormat:
    """A chat prompt format both as Ollama's Go TEMPLATE and as the text it renders (``turn`` for
    one message, ``reply`` the start of the assistant's answer), so that the two can be compared
    with the model's Jinja template."""

    name: str
    template: str
    turn: Callable[[str, str], str]
    reply: str
    stops: tuple[str, ...]

    def render(self, messages: list[dict[str, str]]) -> str:
        return "".join(self.turn(m["role"], m["content"]) for m in messages) + self.reply


FORMATS = (
    PromptFormat(
        "ChatML",
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
        lambda role, content: f"<|im_start|>{role}\n{content}<|im_end|>\n",
        "<|im_start|>assistant\n", ("<|im_start|>", "<|im_end|>")),
    PromptFormat(
        "Llama 3",
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        lambda role, content: f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>",
        "<|start_header_id|>assistant<|end_header_id|>\n\n", ("<|start_header_id|>", "<|eot_id|>")),
    PromptFormat(
        "Phi-3",
        "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n",
        lambda role, content: f"<|{role}|>\n{content}<|end|>\n",
        "<|assistant|>\n", ("<|end|>", "<|user|>", "<|assistant|>")),
)

# Conversations the model's template and a format must render identically: a first question,
# one with a system prompt, and a follow-up after an answer (with and without a system prompt).
_SYSTEM = {"role": "system", "content": "You answer in one sentence."}
_PROBES: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "What is pruning?"}],
    [_SYSTEM, {"role": "user", "content": "What is pruning?"}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Name a colour."}],
    [_SYSTEM, {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Name a colour."}],
)


@dataclass(frozen=True)
class TemplateConversion:
    """The chat template as Ollama takes it: ``format`` the recognised prompt format (None: not
    converted), ``system`` the default system prompt the model's template adds (None: none), and
    ``reason`` in words why nothing was converted ("" when it was)."""

    format: PromptFormat | None
    system: str | None = None
    reason: str = ""


def _token_text(v: Any) -> str:
    if isinstance(v, dict):
        return str(v.get("content") or "")
    return v if isinstance(v, str) else ""


def read_chat_template(folder: Path) -> tuple[str | None, dict[str, str]]:
    """The folder's chat template (``chat_template.jinja``, ``chat_template.json`` or
    ``tokenizer_config.json``; the default one of several named templates) and its special tokens
    (``bos_token``, ``eos_token``); ``(None, {})`` when there is none."""
    cfg: dict[str, Any] = {}
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        try:
            cfg = json.loads(tc.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cfg = {}
    tokens = {k: _token_text(cfg.get(k)) for k in ("bos_token", "eos_token")}
    template: Any = None
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    elif (folder / "chat_template.json").is_file():
        try:
            template = json.loads((folder / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
        except (OSError, ValueError, AttributeError):
            template = None
    else:
        template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return (template if isinstance(template, str) and template.strip() else None), tokens


def _render_jinja(template: str, messages: list[dict[str, str]], tokens: dict[str, str]) -> str:
    """``template`` rendered the way transformers renders a chat template (blocks trimmed, loop
    controls, ``raise_exception``), with the generation prompt."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, **_k: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, **tokens)


def _default_system(fmt: PromptFormat, rendered: str) -> str | None:
    """The system prompt ``rendered`` starts with in ``fmt``'s form (None: it starts otherwise)."""
    marker = "\x00"
    before, _, after = fmt.turn("system", marker).partition(marker)
    if not rendered.startswith(before):
        return None
    end = rendered.find(after, len(before))
    return rendered[len(before):end] if end >= 0 else None


def convert_chat_template(template: str | None, tokens: dict[str, str] | None = None) -> TemplateConversion:
    """The prompt format among :data:`FORMATS` that renders every probe conversation exactly as
    ``template`` does (rendered with an empty ``bos_token``: Ollama adds the start token itself); a default system
    prompt that ``template`` adds when a conversation has none is kept as ``system``."""
    if not template:
        return TemplateConversion(None, reason="the model has no chat template, as a base model has; Ollama then "
                                               "passes the prompt as it is")
    # the start token left out (bos_token ""): Ollama's tokenizer adds it, its template does not
    tokens = dict(tokens or {}, bos_token="")
    try:
        rendered = [_render_jinja(template, m, tokens) for m in _PROBES]
    except ImportError:
        return TemplateConversion(None, reason="jinja2 is not installed, so the chat template could not be read")
    except Exception as e:  # noqa: BLE001 - any template error means: not convertible here
        return TemplateConversion(None, reason=f"its chat template failed on a plain conversation: {e}")
    for fmt in FORMATS:
        system = None
        ok = True
        for messages, text in zip(_PROBES, rendered):
            has_system = messages[0]["role"] == "system"
            if not has_system and system is None and fmt.render(messages) != text:
                system = _default_system(fmt, text)
            full = messages if has_system or system is None else [{"role": "system", "content": system}, *messages]
            if fmt.render(full) != text:
                ok = False
                break
        if ok:
            return TemplateConversion(fmt, system)
    return TemplateConversion(None, reason="its chat template is not one of the formats converted here, "
                                           + ", ".join(f.name for f in FORMATS) + ", exactly")


@dataclass(frozen=True)
class OllamaModelfile:
    """The Modelfile of an export: its ``text``, the ``architecture`` and whether Ollama imports it
    (``importable``), and the chat template's conversion."""

    text: str
    architecture: str
    importable: bool
    conversion: TemplateConversion

    def warning(self) -> str:
        """One sentence for the user when Ollama cannot import this folder as it is ("" when it can)."""
        if self.importable:
            return ""
        return (f"Ollama cannot import {self.architecture or 'this architecture'} from safetensors: convert the "
                "folder to GGUF with llama.cpp's convert_hf_to_gguf.py first, and put the .gguf file in the "
                "Modelfile's FROM line.")


def _quote(text: str) -> str:
    """A Modelfile string: triple-quoted unless it holds triple quotes, then a JSON-escaped one."""
    return f'"""{text}"""' if '"""' not in text and not text.endswith('"') else json.dumps(text)


def modelfile_for(folder: str | Path, report: dict[str, Any] | None = None) -> OllamaModelfile:
    """The Modelfile text for the exported model in ``folder`` (its ``config.json``, its tokenizer
    files, and ``report``, the run's report, for the comments); ``FROM .``: Ollama reads paths in a
    Modelfile from the Modelfile's folder."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportError(f"{folder} holds no readable config.json; export the model there first.") from e
    archs = config.get("architectures") or []
    arch = str(archs[0]) if archs else ""
    importable = arch in OLLAMA_ARCHITECTURES
    template, tokens = read_chat_template(folder)
    conv = convert_chat_template(template, tokens)
    report = report or {}
    name = (report.get("model") or {}).get("name") or folder.name
    lines = [f"# Ollama Modelfile for {name}"
             + (f", pruned with {report.get('method')} to {report.get('sparsity_target')} sparsity"
                if report.get("method") else "") + " (written by Prune Studio).",
             f"# Import it, from this folder: ollama create {ollama_name(folder.name)} -f {MODELFILE_NAME}",
             "# Ollama converts the weights to 16-bit GGUF; add --quantize q4_K_M for a 4-bit model (the pruned",
             "# model's quality after quantization was not measured). The zeros are stored as ordinary values:",
             "# no speed-up or memory saving from sparsity in Ollama."]
    if not importable:
        lines += [f"# WARNING: Ollama's safetensors import does not convert {arch or 'an unnamed architecture'}. "
                  "Convert this folder",
                  "# to GGUF with llama.cpp (convert_hf_to_gguf.py) and write that file's path after FROM instead."]
    lines += ["", "FROM .", ""]
    if conv.format is not None:
        lines += [f"# Chat template: the model's Jinja template is the {conv.format.name} format (checked on probe",
                  "# conversations), written in Ollama's template language.",
                  f"TEMPLATE {_quote(conv.format.template)}"]
        lines += [f'PARAMETER stop {json.dumps(s)}' for s in conv.format.stops]
        if conv.system is not None:
            lines += ["# The default system prompt the model's chat template adds.", f"SYSTEM {_quote(conv.system)}"]
    else:
        lines += [f"# No TEMPLATE: {conv.reason}.",
                  "# Ollama then picks the closest of its own templates to the chat template in this folder, if",
                  "# there is one ('using autodetected template ...'); check a chat with `ollama run` and add a",
                  "# TEMPLATE here if the answers look wrong."]
    return OllamaModelfile("\n".join(lines) + "\n", arch, importable, conv)


def write_modelfile(folder: str | Path, report: dict[str, Any] | None = None) -> tuple[Path, OllamaModelfile]:
    """Write :func:`modelfile_for` into ``folder`` as ``Modelfile`` atomically; returns its path and it."""
    mf = modelfile_for(folder, report)
    path = Path(folder) / MODELFILE_NAME
    try:
        atomic_write_text(path, mf.text)
    except OSError as e:
        raise ExportError(f"Cannot write {path}: {e.strerror or e}.") from e
    return path, mf


def ollama_name(text: str) -> str:
    """A model name Ollama accepts, from a folder name: lower case letters, digits, '.', '_' and '-'."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return name or "pruned-model"


def create_command(modelfile: str | Path, name: str | None = None) -> str:
    """The shell command that imports ``modelfile`` into Ollama as ``name`` (default: its folder's name)."""
    path = Path(modelfile)
    return f"ollama create {ollama_name(name or path.parent.name)} -f {shlex.quote(str(path))}"
