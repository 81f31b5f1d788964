"""Mixture-of-experts models: every expert pruned with the tokens its router sends it.

The reference here is written in the test, from the models' definitions and the Wanda paper, with
plain torch: it runs each block's router itself to find every expert's tokens, computes each
expert's activation itself, and prunes block after block in the reference's two-pass order. It
shares nothing with the code under test but the model classes of transformers.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CORPUS
from prunestudio.core.cli.commands import main
from prunestudio.core.config import PruneConfig
from prunestudio.core.events import run_to_completion
from prunestudio.core.model import architecture, coverage
from prunestudio.core.prune.pipeline import iter_prune
from test_coverage import BLOCKS, MOE, V, expected_counts, moe_model

FAMILIES = list(MOE)


# ---- the reference, written from the models' definitions ---------------------------------------

def _router(mlp: torch.nn.Module) -> torch.nn.Module:
    return mlp.gate if hasattr(mlp, "gate") and not isinstance(mlp.gate, torch.nn.Linear) else mlp.router


def routed_tokens(family: str, mlp: torch.nn.Module, x: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Token indices each expert receives: the router's top-k, computed here from its weights."""
    r = _router(mlp)
    logits = x @ r.weight.t()
    if family == "gpt_oss":
        logits = logits + r.bias
    if family == "deepseek_v3":  # sigmoid scores, plus the correction bias, for the choice only
        logits = torch.sigmoid(logits) + r.e_score_correction_bias
    top = torch.topk(logits, k, dim=-1).indices
    return [torch.nonzero((top == e).any(dim=-1)).flatten() for e in range(r.weight.shape[0])]


def expert_mats(family: str, experts: torch.nn.Module, e: int) -> dict[str, torch.Tensor]:
    """Expert ``e``'s gate, up and down matrices as ``[out, in]`` views of the model's tensors."""
    gu, down = experts.gate_up_proj[e], experts.down_proj[e]
    if family == "gpt_oss":  # stored [in, out]; gate and up interleaved
        gu, down = gu.t(), down.t()
        return {"gate_proj": gu[0::2], "up_proj": gu[1::2], "down_proj": down}
    half = gu.shape[0] // 2
    return {"gate_proj": gu[:half], "up_proj": gu[half:], "down_proj": down}


def activation(family: str, model, experts: torch.nn.Module, e: int, x: torch.Tensor) -> torch.Tensor:
    """What expert ``e``'s down projection reads for inputs ``x``."""
    w = expert_mats(family, experts, e)
    gate, up = x @ w["gate_proj"].t(), x @ w["up_proj"].t()
    if family == "gpt_oss":
        b = experts.gate_up_proj_bias[e]
        gate, up = gate + b[0::2], up + b[1::2]
        lim = model.config.swiglu_limit
        gate, up = gate.clamp(max=lim), up.clamp(-lim, lim)
        return (up + 1) * gate * torch.sigmoid(1.702 * gate)
    return torch.nn.functional.silu(gate) * up


def wanda_prune_(w: torch.Tensor, x: torch.Tensor, sparsity: float) -> None:
    """Wanda (Sun et al., 2024): score |W_ij| * ||X_j||_2, the lowest scores of each output row zeroed."""
    score = w.abs() * x.float().pow(2).sum(0).sqrt()[None, :]
    k = int(w.shape[1] * sparsity)
    idx = torch.sort(score, dim=1, stable=True).indices[:, :k]
    w.scatter_(1, idx, 0.0)


@torch.no_grad()
def reference_wanda(family: str, model, ids: torch.Tensor, sparsity: float, min_tokens: int) -> list[dict]:
    """Prune ``model`` in place block by block (two passes: the dense block's inputs, given the
    earlier blocks pruned); returns each MoE block's per-expert token counts and rules."""
    blocks = model.model.layers
    k = model.config.num_experts_per_tok
    seen = []
    for b in blocks:
        inputs: dict[str, torch.Tensor] = {}
        hooks = []
        for name, mod in b.named_modules():
            if isinstance(mod, torch.nn.Linear):
                hooks.append(mod.register_forward_pre_hook(
                    lambda m, a, name=name: inputs.__setitem__(name, a[0].reshape(-1, a[0].shape[-1]))))
        moe = hasattr(b.mlp, "experts")
        if moe:
            hooks.append(b.mlp.register_forward_pre_hook(
                lambda m, a: inputs.__setitem__("moe", a[0].reshape(-1, a[0].shape[-1]))))
        model(input_ids=ids)
        for h in hooks:
            h.remove()
        for name, mod in b.named_modules():
            if isinstance(mod, torch.nn.Linear):
                wanda_prune_(mod.weight, inputs[name], sparsity)
        if not moe:
            continue
        x = inputs["moe"]
        tokens = routed_tokens(family, b.mlp, x, k)
        info = {"tokens": [len(t) for t in tokens], "rule": []}
        for e, t in enumerate(tokens):
            short = len(t) < max(min_tokens, 1)
            info["rule"].append("all tokens" if short else "routed")
            xe = x if short else x[t]
            h = activation(family, model, b.mlp.experts, e, xe)  # before pruning: the dense block
            w = expert_mats(family, b.mlp.experts, e)
            wanda_prune_(w["gate_proj"], xe, sparsity)
            wanda_prune_(w["up_proj"], xe, sparsity)
            wanda_prune_(w["down_proj"], h, sparsity)
        seen.append(info)
    return seen


def calib_ids(n: int = 8, seqlen: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, V, (n, seqlen), generator=g)


# ---- the tests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("min_tokens", [1, 130])
def test_experts_pruned_like_the_reference(family, min_tokens):
    """Wanda 50%: every weight of every block equals the reference's, experts included; the
    per-expert token counts and the few-token rule are reported as the reference finds them.
    With 8 x 32 tokens, 4 experts and top-2, an expert gets about 128 tokens: 130 makes some short."""
    ids = calib_ids()
    ours = moe_model(family)
    cfg = PruneConfig(method="wanda", sparsity=0.5, batch_size=8, one_pass=False, expert_min_tokens=min_tokens)
    res = run_to_completion(iter_prune(ours, ids, cfg, previews=False))
    ref = moe_model(family)
    seen = reference_wanda(family, ref, ids, 0.5, min_tokens)

    theirs = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert torch.equal(p, theirs[name]), name
    reported = [v["experts"] for k, v in res.module_info.items() if k.endswith("experts[*].gate_proj")]
    assert [r["tokens"] for r in reported] == [s["tokens"] for s in seen]
    assert [r["rule"] for r in reported] == [s["rule"] for s in seen]
    rules = {r for s in seen for r in s["rule"]}
    assert rules == ({"routed"} if min_tokens == 1 else {"routed", "all tokens"})
    short = sum(r != "routed" for s in seen for r in s["rule"])
    said = [n for n in res.notes if "routed calibration tokens" in n]
    assert said == ([] if not short else [f"{short} of {4 * len(seen)} experts received fewer than {min_tokens} "
                                          "routed calibration tokens and were pruned with statistics from all the "
                                          f"tokens of their block (blocks {', '.join(str(i) for i, s in enumerate(seen, len(ours.model.layers) - len(seen)) if 'all tokens' in s['rule'])}); "
                                          "module_info lists each expert's tokens."])
    for k, v in res.module_info.items():
        if "experts[*]" in k:
            assert v["experts"]["sparsity"] == [0.5] * 4, k


@pytest.mark.parametrize("family", FAMILIES)
def test_magnitude_prunes_each_expert_matrix_as_its_own(family):
    """Magnitude's threshold is per matrix, so it sees where one expert matrix ends: gate and up
    are cut apart from the fused tensor (concatenated, or interleaved for GPT-OSS) correctly."""
    model, ref = moe_model(family), moe_model(family)
    run_to_completion(iter_prune(model, None, PruneConfig(method="magnitude", sparsity=0.5), previews=False))
    with torch.no_grad():
        for b in ref.model.layers:
            if not hasattr(b.mlp, "experts"):
                continue
            for e in range(4):
                for w in expert_mats(family, b.mlp.experts, e).values():
                    k = w.numel() // 2
                    cut = torch.sort(w.abs().flatten()).values[k - 1]
                    w.masked_fill_(w.abs() <= cut, 0.0)
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        if ".experts." in name:
            assert torch.equal(p, q), name


@pytest.mark.parametrize("family", FAMILIES)
def test_every_expert_parameter_is_covered(family):
    model = moe_model(family)
    lay = architecture.layout(model)
    cov = coverage.block_coverage(model, lay)
    counts = expected_counts(model)
    assert not cov.partial
    assert cov.pruned_parameters == counts["linear"] + counts["experts"]
    groups = {g.rule: g for g in cov.groups}
    assert set(groups) <= {"norms", "biases", "routers", "vectors"}, groups
    assert groups["routers"].names in (("mlp.gate.weight",), ("mlp.router.weight",))
    names = lay.names_of(len(lay.blocks) - 1)
    assert {"mlp.experts[*].gate_proj", "mlp.experts[*].up_proj", "mlp.experts[*].down_proj"} <= set(names)


@pytest.mark.parametrize("family", FAMILIES)
def test_nm_runs_along_each_experts_input(family):
    """SparseGPT 2:4: in every expert's matrices, exactly 2 of every 4 consecutive inputs are zero."""
    model = moe_model(family)
    run_to_completion(iter_prune(model, calib_ids(), PruneConfig(method="sparsegpt", sparsity=0.5,
                                                                  structure="2:4", batch_size=8),
                                 previews=False))
    checked = 0
    for b in model.model.layers:
        if not hasattr(b.mlp, "experts"):
            continue
        for e in range(4):
            for kind, w in expert_mats(family, b.mlp.experts, e).items():
                zeros = (w == 0).reshape(w.shape[0], -1, 4).sum(-1)
                assert bool((zeros == 2).all()), (family, e, kind)
                checked += 1
    assert checked >= 12


def test_skip_leaves_one_kind_of_expert_matrix_dense():
    model, dense = moe_model("qwen3_moe"), moe_model("qwen3_moe")
    cfg = PruneConfig(method="wanda", sparsity=0.5, batch_size=8, skip_modules=("experts[*].down_proj",))
    run_to_completion(iter_prune(model, calib_ids(), cfg, previews=False))
    for b, d in zip(model.model.layers, dense.model.layers):
        assert torch.equal(b.mlp.experts.down_proj, d.mlp.experts.down_proj)
        assert (b.mlp.experts.gate_up_proj == 0).float().mean().item() == pytest.approx(0.5)
    cov = coverage.block_coverage(model, architecture.layout(model, ("experts[*].down_proj",)),
                                  ("experts[*].down_proj",))
    skipped = {g.rule: g for g in cov.groups}["skipped"]
    assert skipped.parameters == sum(b.mlp.experts.down_proj.numel() for b in model.model.layers)


def test_experts_that_compute_otherwise_are_refused():
    """An experts module whose forward does not follow the protocol: one sentence, not silent
    statistics from the wrong tokens."""
    from prunestudio.core.errors import PruneStudioError

    model = moe_model("qwen3_moe")
    for b in model.model.layers:
        cls = type(b.mlp.experts)
        orig = cls.forward
        b.mlp.experts.forward = lambda h, i, w, _m=b.mlp.experts, _o=orig: 2 * _o(_m, h, i, w)
    with pytest.raises(PruneStudioError, match=r"do not compute what transformers' experts protocol says"):
        run_to_completion(iter_prune(model, calib_ids(), PruneConfig(method="wanda", batch_size=8)))


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("moe-text") / "calib.txt"
    p.write_text((CORPUS + "\n") * 30, encoding="utf-8")
    return p


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss", "deepseek_v3"])
def test_cli_prunes_exports_and_reloads(family, tmp_path, calib_file, capsys):
    """The CLI end to end: experts pruned, the export in the model's own layout reloads with plain
    transformers and computes the same logits as the pruned model, the report lists each expert."""
    from conftest import byte_tokenizer
    from transformers import AutoModelForCausalLM

    d = tmp_path / "model"
    moe_model(family).save_pretrained(d)
    byte_tokenizer(V).save_pretrained(d)
    out, rep, rep2 = tmp_path / "out", tmp_path / "report.json", tmp_path / "eval.json"
    code = main(["prune", "--model", str(d), "--method", "wanda", "--calibration", str(calib_file),
                 "--nsamples", "4", "--seqlen", "32", "--device", "cpu", "--dtype", "fp32",
                 "--eval-ppl", str(calib_file), "--eval-seqlen", "32", "--eval-max-windows", "4",
                 "--out", str(out), "--report", str(rep)])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads(rep.read_text())
    assert report["coverage"]["partial"] is False
    counts = expected_counts(moe_model(family))
    assert report["coverage"]["pruned_parameters"] == counts["linear"] + counts["experts"]
    experts_info = [v["experts"] for k, v in report["module_info"].items() if k.endswith("experts[*].down_proj")]
    assert experts_info and all(len(x["tokens"]) == 4 and len(x["rule"]) == 4 for x in experts_info)
    assert all(sum(x["tokens"]) == 4 * 32 * 2 for x in experts_info)  # every token to its top 2
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    assert set(dict(back.named_parameters())) == set(dict(moe_model(family).named_parameters()))
    for name, p in back.named_parameters():
        if name.startswith(BLOCKS) and name.endswith(("gate_up_proj", "down_proj")) and p.dim() == 3:
            assert (p == 0).float().mean().item() == pytest.approx(0.5), name
    # the export's perplexity, measured afresh from the folder, is the pruned model's
    code = main(["eval", "--model", str(out), "--device", "cpu", "--dtype", "fp32", "--ppl", str(calib_file),
                 "--seqlen", "32", "--max-windows", "4", "--report", str(rep2)])
    assert code == 0, capsys.readouterr().err
    again = json.loads(rep2.read_text())
    ppl_again = next(iter(again["ppl"].values()))
    assert report["ppl_pruned"] == pytest.approx(ppl_again, rel=1e-5)
    assert report["ppl_pruned"] != pytest.approx(report["ppl_dense"], rel=1e-3)


# ---- more families: every MoE layout of transformers' experts protocol is pruned whole ----------

_MORE_COMMON = dict(vocab_size=V, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                    num_hidden_layers=2)
MORE_FAMILIES = {
 "qwen2_moe": dict(intermediate_size=128, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, shared_expert_intermediate_size=64),
 "qwen3_next": dict(intermediate_size=128, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16, linear_value_head_dim=16, layer_types=["linear_attention","full_attention"], shared_expert_intermediate_size=32),
 "granitemoe": dict(intermediate_size=32, num_local_experts=4, num_experts_per_tok=2),
 "granitemoeshared": dict(intermediate_size=32, num_local_experts=4, num_experts_per_tok=2, shared_intermediate_size=32),
 "phimoe": dict(intermediate_size=32, num_local_experts=4, num_experts_per_tok=2),
 "jamba": dict(intermediate_size=32, num_experts=4, num_experts_per_tok=2, expert_layer_period=1, expert_layer_offset=0, attn_layer_period=2, attn_layer_offset=1, mamba_d_state=8, mamba_expand=2, mamba_dt_rank=8, use_mamba_kernels=False),
 "glm4_moe": dict(intermediate_size=64, moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1),
 "deepseek_v2": dict(intermediate_size=64, moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1, q_lora_rank=None, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16),
 "lfm2_moe": dict(intermediate_size=64, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, num_dense_layers=1, layer_types=["conv","full_attention"]),
 "nemotron_h": dict(intermediate_size=64, moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, hybrid_override_pattern="ME", mamba_num_heads=4, mamba_head_dim=16, ssm_state_size=8, n_groups=1, mamba_n_groups=1, moe_shared_expert_intermediate_size=32),
 "ernie4_5_moe": dict(intermediate_size=64, moe_intermediate_size=32, moe_num_experts=4, moe_k=2, moe_layer_start_index=0),
 "hunyuan_v1_moe": dict(intermediate_size=32, num_experts=4, moe_topk=2),
 "minimax": dict(intermediate_size=32, num_local_experts=4, num_experts_per_tok=2, layer_types=["linear_attention","full_attention"]),
 "dots1": dict(intermediate_size=64, moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1),
 "flex_olmo": dict(intermediate_size=32, num_experts=4, num_experts_per_tok=2),
 "exaone_moe": dict(intermediate_size=64, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2),
}


@pytest.mark.parametrize("family", list(MORE_FAMILIES))
def test_more_moe_families_are_pruned_whole(family):
    """Shared experts, hybrid blocks (linear attention, Mamba, short convolutions) and experts
    without a gate (Nemotron-H): every expert matrix reaches 50%, nothing a method would prune is
    left dense, the routers are excluded by rule."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **_MORE_COMMON,
                                                                  **MORE_FAMILIES[family])).eval()
    lay = architecture.layout(model)
    cov = coverage.block_coverage(model, lay)
    assert not cov.partial and "routers" in {g.rule for g in cov.groups}
    res = run_to_completion(iter_prune(model, calib_ids(4, 32), PruneConfig(method="wanda", batch_size=4),
                                       previews=False))
    experts_info = {k: v["experts"] for k, v in res.module_info.items() if "experts[*]" in k}
    assert experts_info, "no expert matrices were pruned"
    for k, v in experts_info.items():
        assert all(s == pytest.approx(0.5, abs=0.02) for s in v["sparsity"]), k
        assert sum(v["tokens"]) > 0
    assert res.global_sparsity == pytest.approx(0.5, abs=0.01)


def test_owl_allocates_blocks_with_their_experts():
    """OWL's pre-pass scores every expert with its routed tokens; each block's experts then reach
    that block's own target (DeepSeek-V3: a dense first block, then MoE blocks)."""
    model = moe_model("deepseek_v3")
    cfg = PruneConfig(method="wanda", owl=True, owl_lambda=0.05, batch_size=8)
    res = run_to_completion(iter_prune(model, calib_ids(), cfg, previews=False))
    targets = res.owl["block_sparsity"]
    assert len(set(round(t, 6) for t in targets)) > 1
    assert sum(targets) / len(targets) == pytest.approx(0.5, abs=1e-6)
    for key, info in res.module_info.items():
        if "experts[*]" in key:
            block = int(key.split(".", 1)[0])
            for s in info["experts"]["sparsity"]:
                assert s == pytest.approx(targets[block], abs=1 / 16), key
