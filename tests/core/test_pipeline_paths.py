"""The pipeline's fast paths give the same results as the plain ones: the accelerator path (device
results read back once per block, SparseGPT without host synchronisation), the statistics pass
that stops after the block's last module, and the memory estimate's structure."""

from __future__ import annotations

import pytest
import torch
from prunestudio.core.config import PruneConfig
from prunestudio.core.events import ModulePruned, run_to_completion
from prunestudio.core.model import architecture
from prunestudio.core.model.loading import describe
from prunestudio.core.prune import pipeline
from prunestudio.core.prune.block import BlockStats
from prunestudio.core.prune.memory import estimate_run_memory, module_shapes
from prunestudio.core.prune.pipeline import iter_prune


def _ids(vocab: int, n: int = 6, seqlen: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, seqlen), generator=g)


def _run(model, ids, cfg, defer):
    old = pipeline.DEFER_HOST_READS
    pipeline.DEFER_HOST_READS = defer
    events = []
    try:
        res = run_to_completion(iter_prune(model, ids, cfg), events.append)
    finally:
        pipeline.DEFER_HOST_READS = old
    return res, [e for e in events if isinstance(e, ModulePruned)]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("method,structure,damp", [("wanda", "unstructured", 0.01), ("sparsegpt", "unstructured", 0.01),
                                                   ("sparsegpt", "2:4", 0.01), ("sparsegpt", "unstructured", 0.0)])
def test_deferred_path_equals_synchronous_path(make_model, tokenizer, arch, method, structure, damp):
    # damp 0 with 2 short samples: singular Hessians, so the deferred path must notice the failed
    # factorisation and redo those modules with raised damping, exactly as the synchronous path
    ids = _ids(len(tokenizer), n=2 if damp == 0 else 6, seqlen=12 if damp == 0 else 24)
    cfg = PruneConfig(method=method, sparsity=0.5, structure=structure, batch_size=2, sparsegpt_damp=damp)
    a, b = make_model(arch), make_model(arch)
    ra, ea = _run(a, ids, cfg, defer=False)
    rb, eb = _run(b, ids, cfg, defer=True)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert ra.layers == rb.layers and ra.notes == rb.notes
    if damp == 0:
        assert any("damping raised" in n for n in ra.notes)
    assert [(e.block, e.name, e.sparsity, e.shape) for e in ea] == [(e.block, e.name, e.sparsity, e.shape) for e in eb]
    for x, y in zip(ea, eb):
        assert x.info.keys() == y.info.keys()
        assert (x.info["mask_image"] == y.info["mask_image"]).all()
        if "error" in x.info:
            assert isinstance(y.info["error"], float)
            assert y.info["error"] == pytest.approx(x.info["error"], rel=1e-6)
            assert x.info["damping"] == y.info["damping"]


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2", "phi3"])
def test_statistics_pass_stops_after_last_module_with_same_statistics(make_model, tokenizer, arch):
    from prunestudio.core.model.offload import restore_outside
    from prunestudio.core.prune.capture import capture_first_block_inputs
    from prunestudio.core.prune.needs import StatsNeeds

    model = make_model(arch)
    ids = _ids(len(tokenizer))
    lay = architecture.layout(model)
    needs = StatsNeeds(sq_norm=True, hessian=True)
    with torch.no_grad():
        inputs, where = capture_first_block_inputs(model, lay.path, lay.blocks[0], ids, 2, torch.device("cpu"))
        restore_outside(model, where)
        block = lay.blocks[0]
        full = BlockStats(block, lay.module_names, needs, torch.device("cpu"), early_stop=False)
        fast = BlockStats(block, lay.module_names, needs, torch.device("cpu"))
        calls = {"n": 0}
        last = block.get_submodule(lay.module_names[-1])
        h = last.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
        for i in range(len(inputs.hidden)):
            fast.run(inputs, i)
        fast.close()
        fast_calls = calls["n"]
        for i in range(len(inputs.hidden)):
            full.run(inputs, i)
        full.close()
        h.remove()
    assert fast_calls == 1  # only the first batch runs the block to the end
    # with the previous block's hint even the first batch stops early, with the same statistics
    with torch.no_grad():
        hinted = BlockStats(block, lay.module_names, needs, torch.device("cpu"), last_hint=fast.last_module)
        h = last.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
        calls["n"] = 0
        for i in range(len(inputs.hidden)):
            hinted.run(inputs, i)
        hinted.close()
        h.remove()
    assert calls["n"] == 0
    for name in lay.module_names:
        assert torch.equal(hinted.stats[name].hessian, full.stats[name].hessian)
    # a wrong hint (a module that runs early) falls back to a full first batch
    with torch.no_grad():
        wrong = BlockStats(block, lay.module_names, needs, torch.device("cpu"),
                                     last_hint=(lay.module_names[0], 1))
        for i in range(len(inputs.hidden)):
            wrong.run(inputs, i)
        wrong.close()
    for name in lay.module_names:
        assert torch.equal(wrong.stats[name].hessian, full.stats[name].hessian)
    for name in lay.module_names:
        torch.testing.assert_close(fast.stats[name].hessian, full.stats[name].hessian, rtol=0, atol=0)
        torch.testing.assert_close(fast.stats[name].sq_norm, full.stats[name].sq_norm, rtol=0, atol=0)
        assert fast.stats[name].nsamples == full.stats[name].nsamples


def test_memory_estimate_structure(make_model):
    model = make_model("llama")
    info = {**describe(model), "module_shapes": module_shapes(model)}
    cpu = estimate_run_memory(info, 64, 512, "sparsegpt", 4, 8)
    disk = estimate_run_memory(info, 64, 512, "sparsegpt", 4, 8, offload="disk")
    none = estimate_run_memory(info, 64, 512, "sparsegpt", 4, 8, offload="none")
    for e in (cpu, disk, none):
        assert e["total"] == e["weights"] + e["activations"] + e["statistics"] + e["block"] + e["margin"]
        assert e["host"] == e["total"]
    assert disk["weights"] < cpu["weights"] == info["parameters"] * 4
    assert none["device"] > cpu["device"]
    wanda = estimate_run_memory(info, 64, 512, "wanda", 4, 8)
    assert wanda["block"] < cpu["block"] and wanda["statistics"] < cpu["statistics"]
    bigger = estimate_run_memory(info, 64, 512, "wanda", 4, 16)
    assert bigger["block"] > wanda["block"]  # a larger batch has a larger working set
