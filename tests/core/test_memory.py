"""The memory a run needs (core/prune/memory.py) and the memory there is (core/model/memory.py)."""

from __future__ import annotations

from prunestudio.core.model.memory import available_memory, format_bytes
from prunestudio.core.prune.memory import estimate_run_memory

INFO = {"parameters": 134_515_008, "prunable_parameters": 30 * (576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536),
        "blocks": 30, "hidden_size": 576,
        "modules_per_block": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]}


def test_estimate_parts_and_scaling():
    w = estimate_run_memory(INFO, 128, 2048, "wanda", 4, 8)
    assert w["weights"] == INFO["parameters"] * 4
    assert w["activations"] == 128 * 2048 * 576 * 4 * 2
    assert w["total"] == w["weights"] + w["activations"] + w["statistics"] + w["block"] + w["margin"]
    s = estimate_run_memory(INFO, 128, 2048, "sparsegpt", 4, 8)
    assert s["statistics"] > 100 * w["statistics"]  # Hessians are in*in
    m = estimate_run_memory(INFO, 128, 2048, "magnitude", 4, 8)
    assert m["activations"] == 0 and m["statistics"] == 0
    assert estimate_run_memory(INFO, 256, 2048, "wanda", 4, 8)["activations"] == 2 * w["activations"]
    assert estimate_run_memory(INFO, 128, 2048, "wanda", 2, 8)["weights"] == w["weights"] // 2


def test_estimate_with_real_shapes(make_model):
    from prunestudio.core.model.loading import describe
    from prunestudio.core.prune.memory import module_shapes

    model = make_model("llama")
    info = describe(model)
    shapes = module_shapes(model)
    assert shapes["mlp.down_proj"] == (64, 128)
    with_shapes = estimate_run_memory({**info, "module_shapes": shapes}, 8, 32, "sparsegpt", 4, 8)
    # q/k/v share one input, gate/up another: 4 distinct inputs, 3 of width 64 and 1 of 128
    assert with_shapes["statistics"] == 4 * (3 * 64 + 128) + 4 * (3 * 64 * 64 + 128 * 128)


def test_available_memory_and_format():
    a = available_memory("cpu")
    assert a["host_available"] and a["host_total"] >= a["host_available"]
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(None) == "unknown"


def test_moe_estimate_counts_experts_and_their_forward():
    """Per-expert statistics (a SparseGPT Hessian per expert and input) and the experts' own forward
    over tokens x top-k rows (measured in bench/moe_prune.py) are in the estimate."""
    from test_coverage import moe_model

    from prunestudio.core.model.loading import describe
    from prunestudio.core.prune.memory import module_shapes

    model = moe_model("qwen3_moe")
    info = {**describe(model), "module_shapes": module_shapes(model)}
    assert info["expert_counts"] == {f"mlp.experts[*].{k}": 4 for k in ("gate_proj", "up_proj", "down_proj")}
    wanda = estimate_run_memory(info, 16, 256, "wanda", 4, batch_size=8, one_pass=False)
    sgpt = estimate_run_memory(info, 16, 256, "sparsegpt", 4, batch_size=8, one_pass=False)
    H, I = 64, 32  # noqa: E741 - the experts' input and intermediate widths
    attn = 64 * 64 + 64 * 64  # q/k/v share one input, o_proj another
    # 4 experts x (input, activation) + the experts' input over all tokens
    assert sgpt["statistics"] - wanda["statistics"] == 4 * (attn + 4 * (H * H + I * I) + H * H)
    tokens, k = 8 * 256, 2
    assert wanda["block"] >= tokens * k * max(4 * H, H + 4 * I) * 4
    top8 = estimate_run_memory({**info, "experts_per_token": 8}, 16, 256, "wanda", 4, batch_size=8, one_pass=False)
    assert top8["block"] - wanda["block"] == tokens * (8 - k) * max(4 * H, H + 4 * I) * 4


def test_memory_is_tight_when_the_working_set_passes_half_of_what_is_free():
    from prunestudio.core.prune.memory import host_memory_tight

    est = estimate_run_memory(INFO, 64, 512, "sparsegpt", 4, 8, one_pass=True)
    need = est["total"] - est["weights"]  # the weights are loaded already
    args = (INFO, 64, 512, "sparsegpt", 4, 8, False, "cpu", True)
    assert host_memory_tight(*args, avail={"host_available": int(1.9 * need)})
    assert not host_memory_tight(*args, avail={"host_available": int(2.1 * need)})
    assert not host_memory_tight(*args, avail={"host_available": None})  # unknown: not tight


def test_the_allocator_hands_memory_back_only_when_tight_or_asked(monkeypatch):
    from prunestudio.core.model import devices

    calls = []
    monkeypatch.setattr(devices, "limit_host_allocator_retention", lambda: calls.append(1) or True)
    monkeypatch.setattr(devices, "_ALLOCATOR_TUNED", None)
    monkeypatch.delenv("PRUNESTUDIO_MALLOC_TUNING", raising=False)
    assert devices.host_allocator_for_run(False) is False and calls == []
    assert devices.host_allocator_for_run(True) is True and calls == [1]
    monkeypatch.setenv("PRUNESTUDIO_MALLOC_TUNING", "0")
    assert devices.host_allocator_for_run(True) is False and calls == [1]
    monkeypatch.setenv("PRUNESTUDIO_MALLOC_TUNING", "1")
    assert devices.host_allocator_for_run(False) is True and calls == [1, 1]


def test_a_cpu_run_asks_for_the_allocator_by_the_memory_it_needs(make_model, monkeypatch):
    import torch

    from prunestudio.core.config import PruneConfig
    from prunestudio.core.events import run_to_completion
    from prunestudio.core.prune import memory as prune_memory
    from prunestudio.core.prune import pipeline

    asked = []
    monkeypatch.setattr(pipeline, "host_allocator_for_run", lambda tight: asked.append(tight) or tight)
    ids = torch.randint(3, 90, (4, 16), generator=torch.Generator().manual_seed(0))
    for free, tight in ((1 << 40, False), (1 << 10, True)):
        monkeypatch.setattr(prune_memory, "available_memory", lambda device="cpu", f=free: {"host_available": f})
        run_to_completion(pipeline.iter_prune(make_model("llama"), ids, PruneConfig(method="wanda", sparsity=0.5)))
        assert asked[-1] is tight
