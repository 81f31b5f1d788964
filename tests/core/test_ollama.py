"""The Modelfile for Ollama (core/run/ollama.py): FROM the export folder, the chat template converted
only when it renders exactly as Ollama's would, an honest warning for architectures Ollama cannot
import, written atomically; the command that imports it."""

from __future__ import annotations

import json
import shlex

import pytest
from prunestudio.core.errors import ExportError
from prunestudio.core.run.ollama import (
    MODELFILE_NAME,
    convert_chat_template,
    create_command,
    modelfile_for,
    ollama_name,
    write_modelfile,
)

# A ChatML template that adds a default system prompt when the conversation has none (as
# SmolLM2-Instruct's does), written here for the test.
CHATML_DEFAULT_SYSTEM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' "
    "+ m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
# Alpaca-style: not one of the converted formats
ALPACA = ("{% for m in messages %}{% if m['role'] == 'user' %}### Instruction:\\n{{ m['content'] }}\\n\\n"
          "{% else %}### Response:\\n{{ m['content'] }}\\n\\n{% endif %}{% endfor %}### Response:\\n")


def _folder(tmp_path, arch="LlamaForCausalLM", template=None, bos="<s>", where="tokenizer_config"):
    d = tmp_path / "export dir"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": "x"}), encoding="utf-8")
    cfg = {"bos_token": bos, "eos_token": "</s>"}
    if template is not None and where == "tokenizer_config":
        cfg["chat_template"] = template
    elif template is not None:
        (d / "chat_template.jinja").write_text(template, encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return d


def _directives(text):
    return [line.split(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")
            and line.split(" ", 1)[0].isupper()]


def test_chatml_with_a_default_system_prompt_becomes_template_stop_and_system(tmp_path):
    d = _folder(tmp_path, template=CHATML_DEFAULT_SYSTEM)
    mf = modelfile_for(d, {"model": {"name": "tiny"}, "method": "wanda", "sparsity_target": 0.5})
    assert mf.importable and mf.conversion.format.name == "ChatML"
    text = mf.text
    assert "\nFROM .\n" in text
    assert 'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}' \
           '<|im_start|>assistant\n"""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert 'SYSTEM """You are a helpful assistant."""' in text
    assert _directives(text) == ["FROM", "TEMPLATE", "PARAMETER", "PARAMETER", "SYSTEM"]
    assert "pruned with wanda" in text


def test_a_start_token_that_is_also_the_chatml_turn_marker_is_kept(tmp_path):
    # SmolLM2's tokenizer names <|im_start|> its bos_token, and its template writes it as the turn marker
    mf = modelfile_for(_folder(tmp_path, template=CHATML_DEFAULT_SYSTEM, bos="<|im_start|>"))
    assert mf.conversion.format.name == "ChatML" and mf.conversion.system == "You are a helpful assistant."


def test_llama3_from_a_jinja_file_without_the_start_token_and_without_system(tmp_path):
    d = _folder(tmp_path, template=LLAMA3, bos="<|begin_of_text|>", where="file")
    mf = modelfile_for(d)
    assert mf.conversion.format.name == "Llama 3" and mf.conversion.system is None
    assert "<|begin_of_text|>" not in mf.text  # Ollama adds the start token itself
    assert 'PARAMETER stop "<|eot_id|>"' in mf.text and "SYSTEM" not in _directives(mf.text)


@pytest.mark.parametrize("template, why", [(ALPACA, "not one of the formats"), (None, "no chat template"),
                                           ("{{ raise_exception('no system role') }}", "failed")])
def test_a_template_that_cannot_be_converted_is_left_to_ollama_with_a_comment(tmp_path, template, why):
    mf = modelfile_for(_folder(tmp_path, template=template))
    assert mf.conversion.format is None and why in mf.conversion.reason
    assert _directives(mf.text) == ["FROM"]
    assert "# No TEMPLATE:" in mf.text and why in mf.text


def test_an_almost_chatml_template_is_not_converted():
    # ChatML but without the newline after the role: Ollama's ChatML would render differently
    bad = CHATML_DEFAULT_SYSTEM.replace("message['role'] + '\\n'", "message['role'] + ' '")
    assert convert_chat_template(bad).format is None


def test_an_architecture_ollama_does_not_import_is_said_plainly(tmp_path):
    mf = modelfile_for(_folder(tmp_path, arch="OPTForCausalLM", template=CHATML_DEFAULT_SYSTEM))
    assert not mf.importable
    assert "OPTForCausalLM" in mf.warning() and "GGUF" in mf.warning()
    assert "# WARNING" in mf.text and "OPTForCausalLM" in mf.text


def test_write_modelfile_and_the_command(tmp_path):
    d = _folder(tmp_path, template=CHATML_DEFAULT_SYSTEM)
    path, mf = write_modelfile(d)
    assert path == d / MODELFILE_NAME and path.read_text(encoding="utf-8") == mf.text
    assert [p.name for p in d.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    cmd = create_command(path)
    assert shlex.split(cmd) == ["ollama", "create", "export-dir", "-f", str(path)]
    assert ollama_name("SmolLM2 135M/wanda 2:4") == "smollm2-135m-wanda-2-4"


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ExportError, match="config.json"):
        modelfile_for(tmp_path)


def test_the_tiny_exported_llama_is_importable(tmp_path, tokenizer, make_model):
    """A real transformers export (config.json and tokenizer files as save_pretrained writes them)."""
    d = tmp_path / "m"
    make_model("llama").save_pretrained(d)
    tokenizer.chat_template = CHATML_DEFAULT_SYSTEM
    try:
        tokenizer.save_pretrained(d)
    finally:
        tokenizer.chat_template = None
    mf = modelfile_for(d)
    assert mf.architecture == "LlamaForCausalLM" and mf.importable
    assert mf.conversion.format is not None and mf.conversion.format.name == "ChatML"
