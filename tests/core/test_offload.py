"""Disk offload: a model pruned with its blocks on disk equals the same model pruned in memory."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model
from prunestudio.core.config import PruneConfig
from prunestudio.core.events import ModulePruned, run_to_completion
from prunestudio.core.model import architecture
from prunestudio.core.model.loading import load_model
from prunestudio.core.model.offload import save_lazy_model, store_of
from prunestudio.core.prune.pipeline import iter_prune


def _ids(vocab: int, n: int = 6, seqlen: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, seqlen), generator=g)


@pytest.fixture
def saved(tmp_path, tokenizer):
    def factory(arch: str):
        d = tmp_path / f"{arch}-model"
        model = tiny_model(arch, vocab_size=len(tokenizer), seed=1)
        model.save_pretrained(d, safe_serialization=True)
        tokenizer.save_pretrained(d)
        return d

    return factory


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
@pytest.mark.parametrize("method,structure", [("wanda", "unstructured"), ("sparsegpt", "unstructured"),
                                              ("sparsegpt", "2:4")])
def test_disk_offload_prunes_exactly_like_memory(saved, tmp_path, tokenizer, arch, method, structure):
    folder = saved(arch)
    ids = _ids(len(tokenizer))
    ref = load_model(str(folder), "cpu", "fp32")
    lazy = load_model(str(folder), "cpu", "fp32", offload="disk", offload_dir=str(tmp_path / "work"))
    store = store_of(lazy.model)
    assert store is not None and store_of(ref.model) is None
    assert lazy.info["parameters"] == ref.info["parameters"]
    lay = architecture.layout(lazy.model)
    assert all(p.is_meta for p in lay.blocks.parameters())  # nothing of the blocks is in memory

    cfg = PruneConfig(method=method, sparsity=0.5, structure=structure, batch_size=4)
    r_ref = run_to_completion(iter_prune(ref.model, ids, cfg))
    loaded_during: list[list[int]] = []

    def watch(ev):
        if isinstance(ev, ModulePruned):
            loaded_during.append(store.loaded_blocks())

    r_lazy = run_to_completion(iter_prune(lazy.model, ids, cfg.with_offload_mode("disk")), watch)

    # one block in memory at a time, and none once the run is over
    assert all(len(x) == 1 for x in loaded_during)
    assert store.loaded_blocks() == []
    assert all(p.is_meta for p in lay.blocks.parameters())
    assert r_lazy.layers == r_ref.layers
    assert r_lazy.global_sparsity == r_ref.global_sparsity

    ref_sd = ref.model.state_dict()
    n = 0
    for name, t in store.block_state_items():
        assert torch.equal(t, ref_sd[name]), name
        n += 1
    assert n == sum(1 for k in ref_sd if k.startswith(lay.path + "."))
    # the pruned blocks are stored compactly: kept values and a bit mask, not the dense matrices
    dense_bytes = sum(t.numel() * t.element_size() for k, t in ref_sd.items() if k.startswith(lay.path + "."))
    on_disk = sum(p.stat().st_size for p in store.pruned.values())
    assert on_disk < 0.7 * dense_bytes

    # forward passes through the disk-backed model read each block when it runs
    with torch.no_grad():
        a = ref.model(input_ids=ids[:2]).logits
        b = lazy.model(input_ids=ids[:2]).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert store.loaded_blocks() == []


def test_disk_offload_export_reloads_as_plain_model(saved, tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    folder = saved("llama")
    ids = _ids(len(tokenizer))
    lazy = load_model(str(folder), "cpu", "fp32", offload="disk")
    ref = load_model(str(folder), "cpu", "fp32")
    cfg = PruneConfig(method="wanda", sparsity=0.5)
    run_to_completion(iter_prune(lazy.model, ids, cfg.with_offload_mode("disk")))
    run_to_completion(iter_prune(ref.model, ids, cfg))
    out = tmp_path / "export"
    save_lazy_model(lazy.model, out, max_shard_bytes=64 * 1024)  # small shards: exercises the index
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ref_sd = ref.model.state_dict()
    for k, v in back.state_dict().items():
        assert torch.equal(v, ref_sd[k]), k
    # the temporary work folder of the pruned blocks goes away with the store
    store = store_of(lazy.model)
    work = store.workdir
    assert work.exists() and any(work.iterdir())
    store.close()
    assert not work.exists()


def test_owl_with_disk_offload(saved, tmp_path, tokenizer):
    folder = saved("llama")
    ids = _ids(len(tokenizer))
    ref = load_model(str(folder), "cpu", "fp32")
    lazy = load_model(str(folder), "cpu", "fp32", offload="disk")
    cfg = PruneConfig(method="wanda", sparsity=0.5, owl=True, owl_lambda=0.08)
    r1 = run_to_completion(iter_prune(ref.model, ids, cfg))
    r2 = run_to_completion(iter_prune(lazy.model, ids, cfg.with_offload_mode("disk")))
    assert r1.owl["block_sparsity"] == r2.owl["block_sparsity"]
    assert r1.layers == r2.layers


def test_disk_offload_config_and_cli(tmp_path):
    from prunestudio.core.cli.commands import _recipe_from_args, build_parser
    from prunestudio.core.errors import ConfigError

    args = build_parser().parse_args(["prune", "--model", "demo", "--offload", "disk",
                                      "--offload-dir", str(tmp_path)])
    recipe = _recipe_from_args(args)
    assert recipe.prune.offload_mode == "disk" and recipe.prune.offload_dir == str(tmp_path)
    args = build_parser().parse_args(["prune", "--model", "demo", "--offload", "none"])
    assert _recipe_from_args(args).prune.offload_mode == "none"
    assert PruneConfig().offload_mode == "cpu"
    with pytest.raises(ConfigError):
        PruneConfig(offload_to="tape")


def test_disk_offload_refuses_gguf_and_missing_weights(tmp_path, tokenizer):
    from prunestudio.core.errors import ModelLoadError
    from prunestudio.core.model.offload import load_model_lazy

    d = tmp_path / "m"
    model = tiny_model("llama", vocab_size=len(tokenizer))
    model.save_pretrained(d, safe_serialization=True)
    from safetensors.torch import load_file, save_file

    sd = load_file(str(d / "model.safetensors"))
    sd.pop("model.layers.1.mlp.down_proj.weight")
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="down_proj"):
        load_model_lazy(d)


def test_disk_offload_prunes_experts_exactly_like_memory(tmp_path, tokenizer):
    """Fused experts pruned from disk (GPT-OSS checkpoints keep them fused): the same weights as
    in memory."""
    from test_coverage import moe_model

    family = "gpt_oss"
    folder = tmp_path / family
    moe_model(family).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ids = _ids(300, n=4, seqlen=16)
    ref = load_model(str(folder), "cpu", "fp32")
    lazy = load_model(str(folder), "cpu", "fp32", offload="disk", offload_dir=str(tmp_path / "work"))
    store = store_of(lazy.model)
    cfg = PruneConfig(method="wanda", sparsity=0.5, batch_size=4)
    r_ref = run_to_completion(iter_prune(ref.model, ids, cfg))
    r_lazy = run_to_completion(iter_prune(lazy.model, ids, cfg.with_offload_mode("disk")))
    assert r_lazy.layers == r_ref.layers and r_lazy.module_info == r_ref.module_info
    ref_sd = ref.model.state_dict()
    experts = 0
    for name, t in store.block_state_items():
        assert torch.equal(t, ref_sd[name]), name
        experts += name.endswith(("experts.gate_up_proj", "experts.down_proj"))
    assert experts == 4  # two blocks, two fused tensors each


def test_disk_offload_refuses_experts_stored_one_by_one(tmp_path, tokenizer):
    """Qwen3-MoE checkpoints store each expert's matrices apart and transformers fuses them while
    loading; disk offload reads tensors by their model names, so it refuses in one sentence."""
    from test_coverage import moe_model

    from prunestudio.core.errors import ModelLoadError

    folder = tmp_path / "qwen3_moe"
    moe_model("qwen3_moe").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with pytest.raises(ModelLoadError, match=r"no tensor named model\.layers\.0\.mlp\.experts\.gate_up_proj.*use offload cpu"):
        load_model(str(folder), "cpu", "fp32", offload="disk", offload_dir=str(tmp_path / "work"))


def test_compact_block_files_read_back_bit_for_bit(tmp_path):
    from prunestudio.core.model.compact import compact_tensors, read_compact, write_compact

    g = torch.Generator().manual_seed(0)
    w = torch.randn(37, 29, generator=g)
    w[torch.rand(37, 29, generator=g) < 0.6] = 0.0
    w[0, :3] = -0.0  # a kept weight that compares equal to zero
    tensors = {"w": w, "half": w.to(torch.bfloat16), "dense": torch.randn(8, 8, generator=g),
               "bias": torch.zeros(29), "idx": torch.arange(6).view(2, 3)}
    _stored, compact = compact_tensors(tensors)
    assert set(compact) == {"w", "half"}  # the dense matrix, 1-D and integer tensors stay as they are
    write_compact(tmp_path / "b.safetensors", tensors)
    back = read_compact(tmp_path / "b.safetensors", list(tensors))
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape
        assert torch.equal(back[k].view(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), k


def test_disk_offload_refuses_a_run_whose_blocks_do_not_fit(saved, tmp_path, tokenizer, monkeypatch):
    import shutil

    from prunestudio.core.errors import PruneStudioError
    from prunestudio.core.model import offload

    folder = saved("llama")
    lazy = load_model(str(folder), "cpu", "fp32", offload="disk", offload_dir=str(tmp_path / "work"))
    real = shutil.disk_usage
    monkeypatch.setattr(offload.shutil, "disk_usage", lambda p: real(p)._replace(free=1024))
    with pytest.raises(PruneStudioError, match="only 1.0 KiB is free"):
        run_to_completion(iter_prune(lazy.model, _ids(len(tokenizer)), PruneConfig(method="wanda", sparsity=0.5)
                                     .with_offload_mode("disk")))
    assert store_of(lazy.model).pruned == {}
