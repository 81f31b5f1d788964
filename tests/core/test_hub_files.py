"""A model fetched by hub id keeps every file it needs, and the export carries them.

The hub cannot be reached from the test machine: ``huggingface_hub.snapshot_download`` is replaced
by a fake that serves a local folder laid out like a hub repository, filtered by the
``allow_patterns`` it is asked for with huggingface_hub's own filter (as the real download does).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
from conftest import CORPUS, byte_tokenizer, tiny_model
from huggingface_hub.utils import filter_repo_objects
from prunestudio.core.cli.commands import EXIT_ERROR, main
from prunestudio.core.errors import ModelLoadError
from prunestudio.core.model.loading import resolve_spec

REPO_ID = "someone/tiny-chat"
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
MODEL_CODE = "# the model's own code: fetched and carried only with --trust-remote-code\n"

NEEDED = {  # what a practitioner expects a downloaded model folder to hold
    "config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "additional_chat_templates/tool_use.jinja", "LICENSE",
}
NOT_NEEDED = {"consolidated.safetensors", "original/consolidated.00.pth", "README.md", "assets/logo.png"}
CODE = {"modeling_tiny.py"}


@pytest.fixture(scope="module")
def fake_repo(tmp_path_factory) -> Path:
    """A hub repository's files: a tiny Llama with its tokenizer, chat templates, licence, and
    files a download must skip (a duplicate checkpoint, original weights, images, code)."""
    repo = tmp_path_factory.mktemp("hub") / "repo"
    tok = byte_tokenizer(300)
    tok.chat_template = TEMPLATE
    model = tiny_model("llama", vocab_size=len(tok))
    model.generation_config.temperature = 0.6
    model.generation_config.do_sample = True
    model.save_pretrained(repo)
    tok.save_pretrained(repo)
    (repo / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    (repo / "additional_chat_templates").mkdir()
    (repo / "additional_chat_templates" / "tool_use.jinja").write_text("{{ messages }}")
    (repo / "LICENSE").write_text("Tiny licence: keep this file with derivatives.\n")
    shutil.copyfile(repo / "model.safetensors", repo / "consolidated.safetensors")
    (repo / "original").mkdir()
    (repo / "original" / "consolidated.00.pth").write_bytes(b"\0" * 64)
    (repo / "assets").mkdir()
    (repo / "assets" / "logo.png").write_bytes(b"\x89PNG")
    (repo / "README.md").write_text("# tiny\n")
    (repo / "modeling_tiny.py").write_text(MODEL_CODE)
    assert NEEDED | NOT_NEEDED | CODE <= _files(repo)
    return repo


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


class FakeHub:
    """Stands in for ``huggingface_hub.snapshot_download``: serves ``repo`` into a cache folder,
    only the files ``allow_patterns`` selects, and records every call."""

    def __init__(self, repo: Path, cache: Path, online: bool = True) -> None:
        self.repo, self.cache, self.online = repo, cache, online
        self.calls: list[dict] = []

    def __call__(self, repo_id: str, *, allow_patterns=None, local_files_only: bool = False, **kw) -> str:
        self.calls.append({"repo_id": repo_id, "allow_patterns": allow_patterns,
                           "local_files_only": local_files_only})
        snap = self.cache / repo_id.replace("/", "--")
        if local_files_only:
            if not snap.exists():
                raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")
            return str(snap)
        if not self.online:
            raise ConnectionError("no network")
        for rel in filter_repo_objects(sorted(_files(self.repo)), allow_patterns=allow_patterns):
            (snap / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.repo / rel, snap / rel)
        snap.mkdir(parents=True, exist_ok=True)
        return str(snap)


@pytest.fixture
def hub(fake_repo, tmp_path, monkeypatch) -> FakeHub:
    fake = FakeHub(fake_repo, tmp_path / "hf-cache")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return fake


@pytest.mark.parametrize("trust", [False, True])
def test_a_hub_download_fetches_what_the_model_needs_and_code_only_when_trusted(hub, trust):
    folder, gguf, name = resolve_spec(REPO_ID, trust_remote_code=trust)
    assert (gguf, name) == (None, REPO_ID)
    assert hub.calls[0]["repo_id"] == REPO_ID and not hub.calls[0]["local_files_only"]
    got = _files(folder)
    assert NEEDED <= got, NEEDED - got
    assert not (NOT_NEEDED & got), NOT_NEEDED & got
    assert (CODE <= got) if trust else not (CODE & got)


def test_offline_the_cached_snapshot_is_used(hub):
    resolve_spec(REPO_ID)  # cached once
    hub.online = False
    folder, _, _ = resolve_spec(REPO_ID)
    assert [c["local_files_only"] for c in hub.calls] == [False, False, True]
    assert "chat_template.jinja" in _files(folder)


def test_offline_and_not_cached_is_one_sentence(hub):
    hub.online = False
    with pytest.raises(ModelLoadError, match="Model not found: someone/tiny-chat is not a local folder"):
        resolve_spec(REPO_ID)


def test_transformers_writes_the_chat_template_file_itself(fake_repo, tmp_path):
    """transformers 5 reads ``chat_template.jinja`` (and the extra templates) into the tokenizer and
    writes them back on save; the export carries them from the source only when it does not."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(fake_repo))
    assert tok.chat_template == {"default": TEMPLATE, "tool_use": "{{ messages }}"}
    tok.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "chat_template.jinja").read_text(encoding="utf-8") == TEMPLATE
    assert (tmp_path / "saved" / "additional_chat_templates" / "tool_use.jinja").exists()


@pytest.mark.parametrize("trust", [False, True])
def test_the_export_of_a_hub_model_carries_its_files(hub, fake_repo, tmp_path, capsys, trust):
    calib = tmp_path / "calib.txt"
    calib.write_text((CORPUS + "\n") * 30, encoding="utf-8")
    out = tmp_path / "pruned"
    argv = ["prune", "--model", REPO_ID, "--method", "wanda", "--sparsity", "0.5", "--calibration", str(calib),
            "--nsamples", "2", "--seqlen", "16", "--device", "cpu", "--dtype", "fp32", "--out", str(out)]
    code = main(argv + (["--trust-remote-code"] if trust else []))
    err = capsys.readouterr().err
    assert code == 0, err
    got = _files(out)
    expected = NEEDED | {"prunestudio.json", "README.md"}
    assert expected <= got, expected - got
    for rel in ("chat_template.jinja", "additional_chat_templates/tool_use.jinja", "LICENSE"):
        assert (out / rel).read_bytes() == (fake_repo / rel).read_bytes(), rel
    assert (CODE <= got) if trust else not (CODE & got)
    assert not ({"consolidated.safetensors", "original/consolidated.00.pth"} & got)
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen.get("temperature"), gen.get("do_sample")) == (0.6, True)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template["default"] == TEMPLATE
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<|user|>hi\n"
    AutoModelForCausalLM.from_pretrained(str(out))


def test_a_local_folder_export_never_carries_code_without_trust(fake_repo, tmp_path, capsys):
    """The same rules hold for a model given as a folder: its *.py stays behind unless trusted."""
    folder = tmp_path / "local"
    shutil.copytree(fake_repo, folder)
    calib = tmp_path / "calib.txt"
    calib.write_text((CORPUS + "\n") * 30, encoding="utf-8")
    out = tmp_path / "pruned"
    code = main(["prune", "--model", str(folder), "--method", "wanda", "--sparsity", "0.5", "--calibration",
                 str(calib), "--nsamples", "2", "--seqlen", "16", "--device", "cpu", "--dtype", "fp32",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    got = _files(out)
    assert {"chat_template.jinja", "LICENSE", "special_tokens_map.json"} <= got
    assert not (CODE & got)
    assert "consolidated.safetensors" not in got
    assert (out / "README.md").read_text(encoding="utf-8") != "# tiny\n"  # the export's own card


def test_a_bad_hub_id_still_says_model_not_found(capsys, tmp_path, monkeypatch):
    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    code = main(["prune", "--model", "nobody/nothing", "--out", str(tmp_path / "x")])
    assert code == EXIT_ERROR
    assert "Model not found: nobody/nothing" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
