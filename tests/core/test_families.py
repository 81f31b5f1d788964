"""Every current model family prunes end to end: dense families and hybrids whose blocks differ.

For each tiny random-init family (``_families.py``: hidden 64, 2-4 blocks; hybrids have each of
their layer kinds): Wanda at 50% and SparseGPT 2:4 through the command line, the export reloaded
with plain transformers, the zeros of every matrix inside the decoder blocks counted from the
exported safetensors (names matched by a pattern here, not by the engine's discovery), and the
captured block inputs replayed block after block equal to the reloaded model's own forward.
"""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from _families import FAMILIES, HYBRID, family_config, family_config_kwargs, family_model
from conftest import CORPUS, byte_tokenizer
from prunestudio.core.cli.commands import main
from prunestudio.core.config import PruneConfig
from prunestudio.core.errors import ConfigError
from prunestudio.core.events import RunStarted, run_to_completion
from prunestudio.core.model import architecture
from prunestudio.core.model.loading import load_model
from prunestudio.core.model.offload import restore_outside, store_of
from prunestudio.core.prune.capture import capture_first_block_inputs, run_block
from prunestudio.core.prune.pipeline import iter_prune
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

# a matrix inside decoder block N: "<...>.layers.N.<...>" (GPT-2: "transformer.h.N.<...>")
_BLOCK_KEY = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.")
# GPT-2's Conv1D keeps its weight as [in, out]
_TRANSPOSED = re.compile(r"^transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer(300)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    p = tmp_path_factory.mktemp("families-text") / "calib.txt"
    p.write_text((CORPUS + "\n") * 30, encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tok):
    """``saved(family)``: a folder with the tiny model of ``family`` and the tokenizer."""
    root = tmp_path_factory.mktemp("families")
    made: dict[str, object] = {}

    def make(family: str):
        if family not in made:
            d = root / family
            family_model(family).save_pretrained(d)
            tok.save_pretrained(d)
            made[family] = d
        return made[family]

    return make


def _prune(model_dir, text, out, *extra) -> None:
    # seqlen 24 is longer than the sliding windows (8) of the tiny configs: the layers' masks differ
    argv = ["--quiet", "prune", "--model", str(model_dir), "--calibration", str(text), "--nsamples", "4",
            "--seqlen", "24", "--batch-size", "2", "--device", "cpu", "--dtype", "fp32",
            "--out", str(out), *extra]
    code = main([str(a) for a in argv])
    assert code == 0, f"prune {' '.join(map(str, extra))} exited {code}"


def _in_block(key: str) -> tuple[int, str]:
    """(block index, name inside the block) of a tensor name inside a decoder block."""
    hit = _BLOCK_KEY.search(key)
    assert hit is not None
    return int(hit.group(1)), key[hit.end():]


def _block_matrices(folder) -> dict[str, torch.Tensor]:
    """Every 2-D tensor inside a decoder block of the export, as ``[out, in]``."""
    found: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                if not _BLOCK_KEY.search(key):
                    continue
                t = st.get_tensor(key)
                if t.dim() != 2:
                    continue  # norms, biases, depthwise convolution kernels [C, 1, K], A_log, ...
                found[key] = t.t() if _TRANSPOSED.match(key) else t
    return found


def _replay_error(model, ids: torch.Tensor, batch: int = 2, own: bool = True) -> float:
    """Largest difference between blocks replayed one after another on the captured inputs and
    the last block's output in the model's own forward (the hidden states before the final norm).
    ``own=False``: every block gets block 0's extras (what a capture of block 0 alone would give)."""
    lay = architecture.layout(model)
    ref: list[torch.Tensor] = []

    def keep(_mod, _args, out):
        ref.append(out[0] if isinstance(out, (tuple, list)) else out)

    handle = lay.blocks[-1].register_forward_hook(keep)
    with torch.no_grad():
        for i in range(0, ids.shape[0], batch):
            model(input_ids=ids[i:i + batch], use_cache=False)
    handle.remove()
    inputs, where = capture_first_block_inputs(model, lay.path, lay.blocks[0], ids, batch, torch.device("cpu"))
    restore_outside(model, where)
    with torch.no_grad():
        for bi, block in enumerate(lay.blocks):
            inputs.select(bi if own else 0)
            for i in range(len(inputs.hidden)):
                inputs.hidden[i] = run_block(block, inputs, i)
    assert len(ref) == len(inputs.hidden)
    return max(float((h - r).abs().max()) for h, r in zip(inputs.hidden, ref))


def test_hybrid_configs_have_blocks_of_each_kind() -> None:
    # the hybrids' tiny configs mix their layer kinds (else the tests below prove nothing on them)
    for family in HYBRID:
        if family == "falcon_h1":
            continue  # every Falcon-H1 layer holds attention and Mamba side by side
        lay = architecture.layout(family_model(family))
        assert len(set(lay.per_block)) >= 2, family


@pytest.mark.parametrize("family", FAMILIES)
def test_family_prunes_exports_and_reloads(family, saved, text, tmp_path) -> None:
    src = saved(family)
    wanda, nm = tmp_path / "wanda", tmp_path / "sparsegpt"
    _prune(src, text, wanda, "--method", "wanda", "--sparsity", "0.5")
    _prune(src, text, nm, "--method", "sparsegpt", "--structure", "2:4")

    mats = _block_matrices(wanda)
    nblocks = family_config(family).num_hidden_layers if family != "gpt2" else family_config(family).n_layer
    assert {int(_BLOCK_KEY.search(k).group(1)) for k in mats} == set(range(nblocks))
    for key, w in mats.items():
        # Wanda compares weights within each output row: exactly half of every row is zero
        zeros = (w == 0).sum(dim=1)
        assert torch.all(zeros == w.shape[1] // 2), f"{family} {key}: {zeros.tolist()}"

    mats_nm = _block_matrices(nm)
    assert set(mats_nm) == set(mats)
    for key, w in mats_nm.items():
        groups = (w.reshape(w.shape[0], -1, 4) == 0).sum(dim=-1)
        assert torch.all(groups == 2), f"{family} {key}: a group of 4 without exactly 2 zeros"
        assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.02), key

    for folder in (wanda, nm):
        back = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        back.eval()
        # the file may name the model differently (Nemotron-H saves "backbone.", loads "model."):
        # match tensors by block index and the name inside the block
        in_file = {_in_block(k): w for k, w in _block_matrices(folder).items()}
        loaded = {_in_block(k): (v.t() if _TRANSPOSED.match(k) else v)
                  for k, v in back.state_dict().items() if _BLOCK_KEY.search(k) and v.dim() == 2}
        assert set(loaded) == set(in_file), family
        for key, w in in_file.items():
            assert torch.equal(loaded[key], w), f"{family}: {key} reloaded differs from the file"
        ids = torch.randint(3, 300, (4, 24), generator=torch.Generator().manual_seed(1))
        err = _replay_error(back, ids)
        assert err < 1e-4, f"{family}: replayed blocks differ from the forward pass by {err}"


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text", "olmo3", "exaone4", "gemma4_text"])
def test_replay_needs_each_blocks_own_inputs(family) -> None:
    """Sliding-window and full-attention layers get different masks and rotary tables, Gemma 4's
    layers their own per-layer input: replaying every block with block 0's extras goes wrong."""
    model = family_model(family)
    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(2))
    assert _replay_error(model, ids) < 1e-5
    try:
        wrong = _replay_error(model, ids, own=False)
    except RuntimeError:  # Gemma 4: block 0's rotary table does not fit the full-attention heads
        return
    assert wrong > 1e-3


def test_per_block_names_of_a_hybrid() -> None:
    model = family_model("qwen3_next")
    lay = architecture.layout(model)
    assert lay.names_of(0)[:3] == ("linear_attn.in_proj_qkvz", "linear_attn.in_proj_ba", "linear_attn.out_proj")
    assert "self_attn.q_proj" not in lay.names_of(0)
    assert "self_attn.q_proj" in lay.names_of(1) and "linear_attn.out_proj" not in lay.names_of(1)
    # the union, in first-seen order: block 0's names, then what block 1 adds
    assert lay.module_names == lay.names_of(0) + tuple(n for n in lay.names_of(1) if n not in lay.names_of(0))
    assert not lay.uniform
    for bi, block in enumerate(lay.blocks):
        want = {n for n, m in block.named_modules() if isinstance(m, nn.Linear)}
        assert set(lay.names_of(bi)) == want


def test_dense_layout_lists_the_same_modules_for_every_block() -> None:
    model = family_model("llama")
    lay = architecture.layout(model)
    assert lay.uniform
    assert all(lay.names_of(bi) == lay.module_names for bi in range(len(lay.blocks)))
    assert lay.module_names == ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def test_module_roles_of_hybrid_mixers() -> None:
    role = architecture.module_role
    assert role("linear_attn.in_proj_qkvz") == "attention"
    assert role("mamba.in_proj") == role("conv.out_proj") == role("mixer.q_proj") == "attention"
    assert role("mixer.up_proj") == role("shared_mlp.input_linear") == role("feed_forward.w2") == "mlp"
    assert role("mlp.shared_expert.down_proj") == "mlp"


def test_nm_check_looks_at_every_block(saved, text, tmp_path, capsys) -> None:
    """A 3:7 structure: the error names modules of both kinds of Qwen3-Next block."""
    d = tmp_path / "m"
    shutil.copytree(saved("qwen3_next"), d)
    code = main(["prune", "--model", str(d), "--calibration", str(text), "--nsamples", "2", "--seqlen", "16",
                 "--device", "cpu", "--dtype", "fp32", "--method", "wanda", "--structure", "3:7",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0
    assert "linear_attn.out_proj" in err and "self_attn.o_proj" in err, err


def test_moe_block_discovery_finds_shared_expert_linears() -> None:
    """A Qwen3-Next with mixture-of-experts blocks: discovery does not fail, and the shared
    expert's linear layers (``nn.Linear``, unlike the fused experts) are among the prunable ones."""
    kw = {**family_config_kwargs("qwen3_next"), "num_experts": 4, "num_experts_per_tok": 2,
          "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen3_next", **kw))
    lay = architecture.layout(model)
    for bi in range(len(lay.blocks)):
        names = lay.names_of(bi)
        assert {"mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj",
                "mlp.shared_expert.down_proj"} <= set(names), names


def test_gemma4_kv_shared_layers_lack_key_value_projections() -> None:
    """Gemma 4's last layers reuse earlier layers' keys and values: they have no k/v projections,
    and replaying them needs each batch's store of shared keys and values from the earlier blocks."""
    kw = {**family_config_kwargs("gemma4_text"), "num_hidden_layers": 4, "num_kv_shared_layers": 2,
          "layer_types": ["sliding_attention", "full_attention"] * 2}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("gemma4_text", **kw)).eval()
    lay = architecture.layout(model)
    assert "self_attn.k_proj" in lay.names_of(1) and "self_attn.k_proj" not in lay.names_of(3)
    ids = torch.randint(3, 300, (4, 24), generator=torch.Generator().manual_seed(0))
    assert _replay_error(model, ids) < 1e-5
    res = run_to_completion(iter_prune(model, ids, PruneConfig(method="wanda", sparsity=0.5)))
    assert [set(layer["modules"]) for layer in res.layers] == [set(lay.names_of(i)) for i in range(4)]
    for bi, block in enumerate(lay.blocks):
        for name in lay.names_of(bi):
            w = block.get_submodule(name).weight
            assert float((w == 0).float().mean()) == 0.5, (bi, name)
    assert _replay_error(model, ids) < 1e-4


@pytest.mark.parametrize("cfg", [dict(method="wanda", sparsity=0.5, owl=True), dict(method="dsnot", sparsity=0.5),
                                 dict(method="sparsegpt", sparsity=0.5, one_pass=False)],
                         ids=["owl", "dsnot", "sparsegpt-two-pass"])
def test_hybrid_blocks_with_other_methods(cfg) -> None:
    """OWL's pre-pass, DSnoT and the two-pass order on Nemotron-H's three kinds of block: each
    block reports its own modules, each pruned to its block's target."""
    model = family_model("nemotron_h")
    lay = architecture.layout(model)
    ids = torch.randint(3, 300, (4, 24), generator=torch.Generator().manual_seed(0))
    started: list[RunStarted] = []
    res = run_to_completion(iter_prune(model, ids, PruneConfig(**cfg)),
                            lambda ev: started.append(ev) if isinstance(ev, RunStarted) else None)
    assert started[0].block_module_names == lay.per_block
    assert started[0].module_names == lay.module_names
    for bi, layer in enumerate(res.layers):
        assert tuple(layer["modules"]) == lay.names_of(bi)
        for name, sp in layer["modules"].items():
            assert sp == pytest.approx(res.block_sparsity[bi], abs=0.02), (bi, name)


def test_hybrid_disk_offload_prunes_exactly_like_memory(saved, tmp_path) -> None:

    folder = saved("qwen3_next")  # linear-attention and full-attention blocks
    ids = torch.randint(3, 300, (4, 24), generator=torch.Generator().manual_seed(0))
    ref = load_model(str(folder), "cpu", "fp32")
    lazy = load_model(str(folder), "cpu", "fp32", offload="disk", offload_dir=str(tmp_path / "work"))
    store = store_of(lazy.model)
    assert store is not None
    cfg = PruneConfig(method="sparsegpt", sparsity=0.5, batch_size=2)
    r_ref = run_to_completion(iter_prune(ref.model, ids, cfg))
    r_lazy = run_to_completion(iter_prune(lazy.model, ids, cfg.with_offload_mode("disk")))
    assert r_lazy.layers == r_ref.layers
    ref_sd = ref.model.state_dict()
    for name, t in store.block_state_items():
        assert torch.equal(t, ref_sd[name]), name


def test_find_blocks_takes_mixed_classes_and_never_nested_lists() -> None:
    """Blocks of two classes (one per layer kind) are one list of blocks; the longer list of
    experts inside each block, and a longer list of bare linear layers, are not."""
    class Expert(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.Linear(8, 16)

    class AttentionBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = nn.Linear(8, 8)
            self.experts = nn.ModuleList(Expert() for _ in range(6))

    class MixerBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.in_proj = nn.Linear(8, 16)
            self.experts = nn.ModuleList(Expert() for _ in range(6))

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads = nn.ModuleList(nn.Linear(8, 8) for _ in range(5))
            self.layers = nn.ModuleList([MixerBlock(), AttentionBlock(), MixerBlock()])

    lay = architecture.layout(Model())
    assert lay.path == "layers"
    assert lay.names_of(0) == ("in_proj",) + tuple(f"experts.{i}.up" for i in range(6))
    assert lay.names_of(1)[0] == "q"


def test_skip_list_can_empty_one_kind_of_block() -> None:
    """Skipping linear attention and the MLP leaves Qwen3-Next's linear-attention block nothing to
    prune: it stays dense and the full-attention block is pruned; OWL, which compares blocks,
    refuses with one sentence."""
    ids = torch.randint(3, 300, (4, 24), generator=torch.Generator().manual_seed(0))
    model = family_model("qwen3_next")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    skip = ("linear_attn", "mlp")
    res = run_to_completion(iter_prune(model, ids, PruneConfig(method="sparsegpt", sparsity=0.5, skip_modules=skip)))
    assert res.layers[0]["modules"] == {}
    assert set(res.layers[1]["modules"]) == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                             "self_attn.o_proj"}
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"model.layers.1.self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    with pytest.raises(ConfigError, match="block 0 nothing to prune"):
        run_to_completion(iter_prune(family_model("qwen3_next"), ids,
                                     PruneConfig(method="wanda", sparsity=0.5, owl=True, skip_modules=skip)))
