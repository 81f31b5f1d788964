"""The layer-by-layer pipeline on tiny random models of several architectures."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import ARCHS
from prunestudio.core.config import PruneConfig
from prunestudio.core.errors import Cancelled, ConfigError
from prunestudio.core.events import BlockDone, ModulePruned, RunFinished, RunStarted, run_to_completion
from prunestudio.core.model import architecture
from prunestudio.core.model.offload import restore_outside
from prunestudio.core.prune.capture import capture_first_block_inputs, run_block
from prunestudio.core.prune.pipeline import iter_prune
from prunestudio.core.prune.result import is_incomplete


def _ids(vocab: int, n: int = 6, seqlen: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, seqlen), generator=g)


def _module_inputs(model, block, names, ids):
    """Every input of ``names`` (modules of ``block``) in one whole-model forward, in firing order."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    order: list[str] = []

    def record(mod, args, name):
        seen[name].append(args[0].detach().clone())
        order.append(name)

    handles = [block.get_submodule(name).register_forward_pre_hook(
        lambda mod, args, name=name: record(mod, args, name)) for name in names]
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()
    return seen, list(dict.fromkeys(order))


_LLAMA_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _blocks_and_linears(model, arch):
    """The decoder blocks and the linear layers inside each, by each architecture's own attribute
    names (transformers' modeling files), and whether the weight is stored transposed (GPT-2's
    ``Conv1D`` keeps (in, out))."""
    if arch == "gpt2":
        return model.transformer.h, ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"), True
    if arch == "opt":
        return model.model.decoder.layers, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                            "self_attn.out_proj", "fc1", "fc2"), False
    if arch == "phi3":
        return model.model.layers, ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj",
                                    "mlp.down_proj"), False
    return model.model.layers, _LLAMA_LINEARS, False


def _brute_force_wanda(model, arch, ids, sparsity, n=0, m=0, sequential=False):
    """Wanda from the paper, written here with plain torch: for block i, run the whole (partly
    pruned) model and hook the linear layers' inputs; score S_ij = |W_ij| * ||X_j||_2 (the norm of
    input feature j over every calibration token); in each output row remove the lowest scores
    (``sparsity`` of the row, or N in each group of M consecutive inputs).

    ``sequential``: the one-pass order; each module's inputs are taken with the modules that run
    before it in the block already pruned (one whole-model forward per module).
    """
    blocks, linears, transposed = _blocks_and_linears(model, arch)
    for block in blocks:
        seen, firing = _module_inputs(model, block, linears, ids)
        assert sorted(firing) == sorted(linears)
        for name in firing:
            if sequential:
                seen, _ = _module_inputs(model, block, [name], ids)
            weight = block.get_submodule(name).weight
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen[name]]).double()
            norm = torch.sqrt((x * x).sum(0))
            w = (weight.t() if transposed else weight).detach().double()  # (out, in)
            assert w.shape[1] == norm.numel()
            score = w.abs() * norm[None, :]
            mask = torch.zeros_like(w, dtype=torch.bool)
            for r in range(w.shape[0]):
                if n:
                    for g in range(0, w.shape[1], m):
                        order = torch.argsort(score[r, g:g + m])
                        mask[r, g + order[:n]] = True
                else:
                    order = torch.argsort(score[r])
                    mask[r, order[: int(w.shape[1] * sparsity)]] = True
            with torch.no_grad():
                weight[mask.t() if transposed else mask] = 0


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
@pytest.mark.parametrize("one_pass", [True, False], ids=["one-pass", "two-pass"])
def test_wanda_equals_brute_force(make_model, tokenizer, arch, structure, one_pass):
    model = make_model(arch)
    ref = make_model(arch)
    ids = _ids(len(tokenizer))
    cfg = PruneConfig(method="wanda", sparsity=0.5, structure=structure, batch_size=4, one_pass=one_pass)
    res = run_to_completion(iter_prune(model, ids, cfg))
    n, m = cfg.nm
    _brute_force_wanda(ref, arch, ids, 0.5, n, m, sequential=one_pass)
    # every parameter of the model, pruned or not, against the reference
    got, want = model.state_dict(), ref.state_dict()
    assert list(got) == list(want)
    pruned = 0
    for key, w_ref in want.items():
        w = got[key]
        agree = ((w == 0) == (w_ref == 0)).float().mean().item()
        assert agree > 0.999, f"{arch} {key}: masks agree on {agree:.4%}"
        torch.testing.assert_close(w, w_ref, msg=lambda s, key=key: f"{arch} {key}: {s}")
        pruned += int((w_ref == 0).sum())
    blocks, linears, _ = _blocks_and_linears(ref, arch)
    assert pruned >= 0.5 * sum(b.get_submodule(x).weight.numel() for b in blocks for x in linears)
    assert res.global_sparsity == pytest.approx(0.5)
    assert not is_incomplete(model)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_wanda_rows_have_exact_zero_count(make_model, tokenizer, arch, sparsity):
    model = make_model(arch)
    run_to_completion(iter_prune(model, _ids(len(tokenizer)), PruneConfig(method="wanda", sparsity=sparsity)))
    lay = architecture.layout(model)
    for block in lay.blocks:
        for name in lay.module_names:
            w = architecture.get_weight_2d(block.get_submodule(name))
            zeros = (w == 0).sum(dim=1)
            assert torch.all(zeros == math.floor(w.shape[1] * sparsity)), name


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
@pytest.mark.parametrize("nm", [(2, 4), (4, 8), (1, 4), (3, 8)])
def test_nm_groups(make_model, tokenizer, method, nm):
    """Exactly N zeros in every group of M consecutive inputs of a row (not "at least N": zeroing
    everything would pass that), the kept weights untouched, and magnitude's zeros the N smallest
    |w| of their group. Read through the model's own attributes (a Llama), not the code under test."""
    n, m = nm
    model = make_model("llama")
    linears = lambda mdl: {f"{i}.{part}.{name}": getattr(getattr(layer, part), name).weight.detach()  # noqa: E731
                           for i, layer in enumerate(mdl.model.layers)
                           for part, names in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                                               ("mlp", ("gate_proj", "up_proj", "down_proj")))
                           for name in names}
    dense = {k: w.clone() for k, w in linears(model).items()}
    assert all(torch.all(w != 0) for w in dense.values())  # every zero below is the method's
    run_to_completion(iter_prune(model, _ids(len(tokenizer)),
                                 PruneConfig(method=method, sparsity=n / m, structure=f"{n}:{m}")))
    for key, w in linears(model).items():
        zero = (w == 0).reshape(w.shape[0], -1, m)
        assert torch.all(zero.sum(-1) == n), key
        kept = w != 0
        assert torch.equal(w[kept], dense[key][kept]), key
        if method == "magnitude":
            mag = dense[key].abs().reshape(w.shape[0], -1, m)
            removed_max = torch.where(zero, mag, torch.zeros_like(mag)).amax(-1)
            kept_min = torch.where(zero, torch.full_like(mag, float("inf")), mag).amin(-1)
            assert torch.all(removed_max <= kept_min), key


def test_magnitude_hits_target_per_matrix_and_needs_no_data(make_model):
    model = make_model("qwen2")
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    res = run_to_completion(iter_prune(model, None, PruneConfig(method="magnitude", sparsity=0.6)))
    lay = architecture.layout(model)
    for bi, block in enumerate(lay.blocks):
        for name in lay.module_names:
            w = architecture.get_weight_2d(block.get_submodule(name))
            assert (w == 0).sum().item() == int(w.numel() * 0.6)
            # the removed weights are the smallest in magnitude of the whole matrix
            orig = dense[f"{lay.path}.{bi}.{name}.weight"]
            kept_min = orig.abs()[w != 0].min()
            removed_max = orig.abs()[w == 0].max()
            assert removed_max <= kept_min
    assert "capture" not in res.seconds


@pytest.mark.parametrize("arch", ARCHS)
def test_captured_block_replay_equals_full_forward(make_model, tokenizer, arch):
    model = make_model(arch)
    ids = _ids(len(tokenizer), n=5)
    lay = architecture.layout(model)
    with torch.no_grad():
        full = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        inputs, where = capture_first_block_inputs(model, lay.path, lay.blocks[0], ids, 2, torch.device("cpu"))
        restore_outside(model, where)
        torch.testing.assert_close(torch.cat(inputs.hidden), full[0])
        for bi, block in enumerate(lay.blocks[:-1]):
            for i in range(len(inputs.hidden)):
                inputs.hidden[i] = run_block(block, inputs, i)
            torch.testing.assert_close(torch.cat(inputs.hidden), full[bi + 1], rtol=1e-5, atol=1e-5)


def test_zero_sparsity_pipeline_leaves_model_identical(make_model, tokenizer):
    model = make_model("llama")
    ids = _ids(len(tokenizer))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    nb = len(architecture.layout(model).blocks)
    cfg = PruneConfig(method="wanda", sparsity=0.5, block_sparsity=(0.0,) * nb)
    res = run_to_completion(iter_prune(model, ids, cfg))
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert res.global_sparsity == 0.0


def test_events_describe_the_run(make_model, tokenizer):
    model = make_model("llama")
    events = []
    res = run_to_completion(iter_prune(model, _ids(len(tokenizer)), PruneConfig(method="wanda")), events.append)
    started = [e for e in events if isinstance(e, RunStarted)][0]
    pruned = [e for e in events if isinstance(e, ModulePruned)]
    done = [e for e in events if isinstance(e, BlockDone)]
    assert len(pruned) == started.num_blocks * len(started.module_names)
    assert [d.index for d in done] == list(range(started.num_blocks))
    assert isinstance(events[-1], RunFinished)
    for e in pruned:
        assert res.layers[e.block]["modules"][e.name] == e.sparsity
        assert e.info["mask_image"].dtype.name == "float32"
        assert e.info["row_sparsity"].shape == (e.shape[0],)


def test_cancel_between_modules_marks_model_incomplete(make_model, tokenizer):
    model = make_model("llama")
    seen = []

    def stop():
        return len(seen) >= 3

    gen = iter_prune(model, _ids(len(tokenizer)), PruneConfig(method="wanda"), should_stop=stop)
    with pytest.raises(Cancelled):
        for ev in gen:
            if isinstance(ev, ModulePruned):
                seen.append(ev)
    assert len(seen) == 3
    assert is_incomplete(model)


def test_nm_with_indivisible_inputs_names_the_module(make_model, tokenizer):
    model = make_model("llama")  # hidden 64, intermediate 128: 3:7 divides neither
    with pytest.raises(ConfigError, match="multiple of 7"):
        run_to_completion(iter_prune(model, _ids(len(tokenizer)), PruneConfig(structure="3:7", sparsity=0.4)))


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_impossible_sparsity_is_refused(bad):
    with pytest.raises(ConfigError, match="between 0 and 1"):
        PruneConfig(sparsity=bad)


def test_skip_modules_stay_dense(make_model, tokenizer):
    model = make_model("llama")
    res = run_to_completion(iter_prune(model, _ids(len(tokenizer)),
                                       PruneConfig(method="wanda", skip_modules=("down_proj",))))
    lay = architecture.layout(model)
    assert all("down_proj" not in n for n in res.layers[0]["modules"])
    w = lay.blocks[0].get_submodule("mlp.down_proj").weight
    assert (w == 0).sum() == 0


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("one_pass", [True, False], ids=["one-pass", "two-pass"])
def test_sparsegpt_factors_each_shared_input_once(make_model, tokenizer, arch, one_pass, monkeypatch):
    """q/k/v (and Llama's gate/up) read one input: its inverse-Hessian factor is computed once per
    block and gives the very weights that a factor per module gives."""
    from prunestudio.core.prune.methods import SharedInputCache
    from prunestudio.core.prune.methods import sparsegpt as sg

    ids = _ids(len(tokenizer))
    cfg = PruneConfig(method="sparsegpt", sparsity=0.5, batch_size=3, one_pass=one_pass)
    calls = []
    real = sg.hessian_factor
    monkeypatch.setattr(sg, "hessian_factor", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = make_model(arch)
    run_to_completion(iter_prune(model, ids, cfg))
    nblocks = len(architecture.layout(model).blocks)
    assert len(calls) == 4 * nblocks  # attention input, attention output, MLP input, MLP hidden

    calls.clear()
    monkeypatch.setattr(SharedInputCache, "get", lambda self, stats, key, make: make())
    ref = make_model(arch)
    run_to_completion(iter_prune(ref, ids, cfg))
    assert len(calls) == len(architecture.layout(ref).module_names) * nblocks
    for (name, p), (_, p_ref) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, p_ref), name
