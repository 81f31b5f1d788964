"""One-pass pruning (core/prune/lockstep.py): same masks whatever the batching, clean threads on cancel
and errors, and a fall-back to the two-pass order for a module that runs twice per forward."""

from __future__ import annotations

import threading
import types

import pytest
import torch
from prunestudio.core.config import PruneConfig
from prunestudio.core.errors import Cancelled
from prunestudio.core.events import ModulePruned, run_to_completion
from prunestudio.core.model import architecture
from prunestudio.core.prune.capture import BlockInputs
from prunestudio.core.prune.lockstep import LockstepBlock, NotLockstepable
from prunestudio.core.prune.needs import StatsNeeds
from prunestudio.core.prune.pipeline import iter_prune
from prunestudio.core.prune.result import is_incomplete
from torch import nn


def _ids(vocab: int, n: int = 6, seqlen: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, seqlen), generator=g)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2", "phi3"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_one_pass_does_not_depend_on_batching(make_model, tokenizer, arch, method):
    ids = _ids(len(tokenizer))
    masks = []
    for batch in (1, 4, 6):
        model = make_model(arch)
        run_to_completion(iter_prune(model, ids, PruneConfig(method=method, batch_size=batch, one_pass=True)))
        masks.append({k: v == 0 for k, v in model.state_dict().items() if k.endswith("weight")})
    for other in masks[1:]:
        for k in masks[0]:
            agree = (masks[0][k] == other[k]).float().mean().item()
            assert agree > 0.995, f"{k}: {agree:.4%}"


def test_one_pass_differs_from_two_pass_only_after_the_first_modules(make_model, tokenizer):
    """q/k/v and gate/up read the same input either way; o_proj and down_proj see pruned inputs."""
    ids = _ids(len(tokenizer))
    a, b = make_model("llama"), make_model("llama")
    run_to_completion(iter_prune(a, ids, PruneConfig(one_pass=True)))
    run_to_completion(iter_prune(b, ids, PruneConfig(one_pass=False)))
    first = architecture.layout(a).blocks[0]
    first_b = architecture.layout(b).blocks[0]
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        assert torch.equal(first.get_submodule(name).weight, first_b.get_submodule(name).weight), name
    assert not torch.equal(first.get_submodule("self_attn.o_proj").weight,
                           first_b.get_submodule("self_attn.o_proj").weight)


def _live_batch_threads() -> int:
    return sum(t.name.startswith("prunestudio-batch-") for t in threading.enumerate())


@pytest.mark.parametrize("after", [1, 4, 9])
def test_cancel_in_one_pass_stops_every_batch_thread(make_model, tokenizer, after):
    model = make_model("llama")
    seen: list[ModulePruned] = []
    gen = iter_prune(model, _ids(len(tokenizer)), PruneConfig(batch_size=2, one_pass=True),
                     should_stop=lambda: len(seen) >= after)
    with pytest.raises(Cancelled):
        for ev in gen:
            if isinstance(ev, ModulePruned):
                seen.append(ev)
    assert len(seen) == after
    assert is_incomplete(model)
    assert _live_batch_threads() == 0


def test_abandoning_the_generator_mid_block_stops_the_threads(make_model, tokenizer):
    model = make_model("llama")
    gen = iter_prune(model, _ids(len(tokenizer)), PruneConfig(batch_size=2, one_pass=True))
    for ev in gen:
        if isinstance(ev, ModulePruned):
            break
    assert _live_batch_threads() == 3  # paused at the next module
    gen.close()
    assert _live_batch_threads() == 0


def test_error_inside_a_batch_reaches_the_caller(make_model, tokenizer):
    model = make_model("llama")
    block = architecture.layout(model).blocks[1]

    def boom(module, args):
        raise RuntimeError("simulated failure in the MLP")

    block.mlp.up_proj.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="simulated failure"):
        run_to_completion(iter_prune(model, _ids(len(tokenizer)), PruneConfig(batch_size=2, one_pass=True)))
    assert _live_batch_threads() == 0
    assert is_incomplete(model)


def _down_proj_twice(mlp):
    def forward(self, x):
        h = self.act_fn(self.gate_proj(x)) * self.up_proj(x)
        return 0.5 * (self.down_proj(h) + self.down_proj(h))

    mlp.forward = types.MethodType(forward, mlp)


def test_module_running_twice_falls_back_to_two_passes(make_model, tokenizer):
    ids = _ids(len(tokenizer))
    a, b = make_model("llama"), make_model("llama")
    for model in (a, b):
        for block in architecture.layout(model).blocks:
            _down_proj_twice(block.mlp)
    res = run_to_completion(iter_prune(a, ids, PruneConfig(one_pass=True)))
    run_to_completion(iter_prune(b, ids, PruneConfig(one_pass=False)))
    assert any("two-pass" in n for n in res.notes)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert res.global_sparsity == pytest.approx(0.5)


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8, bias=False)
        self.b = nn.Linear(8, 8, bias=False)
        self.c = nn.Linear(8, 4, bias=False)

    def forward(self, x):
        return self.c(torch.relu(self.a(x)) + self.b(x))


def test_lockstep_block_shares_statistics_and_returns_outputs():
    torch.manual_seed(0)
    block = _Toy()
    xs = [torch.randn(2, 5, 8) for _ in range(3)]
    inputs = BlockInputs(list(xs), [()] * 3, [{}] * 3)
    lock = LockstepBlock(block, inputs, ("a", "b", "c"), StatsNeeds(sq_norm=True), torch.device("cpu"))
    order = []
    for name in lock.modules():
        order.append(name)
        block.get_submodule(name).weight.data.mul_(0.5)  # "prune": later modules must see it
    assert order == ["a", "b", "c"]
    assert lock.stats["a"] is lock.stats["b"]  # same input tensor
    assert lock.stats["a"].nsamples == 30
    x = torch.cat([t.reshape(-1, 8) for t in xs])
    torch.testing.assert_close(lock.stats["a"].sq_norm, (x * x).sum(0))
    # c's statistics were taken with a and b already halved
    with torch.no_grad():
        h = torch.relu(block.a(x)) + block.b(x)
        torch.testing.assert_close(lock.stats["c"].sq_norm, (h * h).sum(0))
        for t, out in zip(xs, lock.outputs):
            torch.testing.assert_close(out, block(t))
    assert _live_batch_threads() == 0


def test_lockstep_block_refuses_a_module_called_twice():
    block = _Toy()
    block.forward = types.MethodType(lambda self, x: self.c(self.a(self.a(x))), block)
    inputs = BlockInputs([torch.randn(1, 3, 8)], [()], [{}])
    lock = LockstepBlock(block, inputs, ("a", "c"), StatsNeeds(sq_norm=True), torch.device("cpu"))
    with pytest.raises(NotLockstepable, match="more than once"):
        for _ in lock.modules():
            pass
    assert _live_batch_threads() == 0


def test_one_pass_that_would_not_fit_takes_two_passes(make_model, tokenizer, monkeypatch):
    """With too little free memory for one pass but enough for two, the run takes two passes,
    says why, and gives exactly the two-pass result."""
    from prunestudio.core.events import Message
    from prunestudio.core.model.loading import describe
    from prunestudio.core.prune import memory

    ids = _ids(len(tokenizer), n=8)
    model = make_model("llama")
    info = {**describe(model), "module_shapes": memory.module_shapes(model)}
    kw = dict(method="wanda", dtype_bytes=4, batch_size=2)
    one = memory.estimate_run_memory(info, 8, 24, one_pass=True, **kw)
    two = memory.estimate_run_memory(info, 8, 24, one_pass=False, **kw)
    need_one, need_two = one["total"] - one["weights"], two["total"] - two["weights"]
    assert need_one > need_two
    free = int((need_one + need_two) / 2 / 0.9)
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": {"host_available": free})
    events = []
    res = run_to_completion(iter_prune(model, ids, PruneConfig(batch_size=2, one_pass=True)), events.append)
    assert any("two passes" in n for n in res.notes)
    assert any(isinstance(e, Message) and "two passes" in e.text for e in events)
    ref = make_model("llama")
    run_to_completion(iter_prune(ref, ids, PruneConfig(batch_size=2, one_pass=False)))
    for (k, va), vb in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(va, vb), k
    # plenty of memory: one pass
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": {"host_available": 1 << 40})
    res = run_to_completion(iter_prune(make_model("llama"), ids, PruneConfig(batch_size=2, one_pass=True)))
    assert not any("two passes" in n for n in res.notes)


@pytest.mark.parametrize("method,init,expected", [("sparsegpt", "wanda", True), ("wanda", "wanda", False),
                                                  ("magnitude", "wanda", False), ("dsnot", "wanda", False),
                                                  ("dsnot", "sparsegpt", True)])
def test_default_pass_order_by_method(make_model, tokenizer, method, init, expected):
    """By default only SparseGPT's weight reconstruction runs in one pass; the batch threads exist
    exactly then."""
    cfg = PruneConfig(method=method, dsnot_init=init, owl=method == "magnitude", batch_size=2)
    assert cfg.passes_once is expected
    assert PruneConfig(method=method, one_pass=not expected).passes_once is (not expected)
    model = make_model("llama")
    peak = [0]
    gen = iter_prune(model, _ids(len(tokenizer)), cfg)
    for _ in gen:
        peak[0] = max(peak[0], _live_batch_threads())
    assert (peak[0] > 0) is expected
