"""The coverage guarantee: a run says what it pruned of the decoder blocks, refuses to leave
weights dense silently (the fused experts of mixture-of-experts models) and, when the user allows a
partial run, says so in the CLI summary, the report, the model card and the history.

The expected numbers are counted here from the model's own parameters (names and shapes as
transformers builds them), independently of ``core/model/coverage.py``.
"""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
import torch
from conftest import CORPUS, byte_tokenizer, tiny_model
from prunestudio.core.cli.commands import EXIT_ERROR, main
from prunestudio.core.config import PruneConfig, Recipe
from prunestudio.core.errors import ConfigError
from prunestudio.core.run.export import model_card
from prunestudio.core.run.history import History

V = 300
_COMMON = dict(vocab_size=V, bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=512,
               hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
MOE = {
    "qwen3_moe": dict(intermediate_size=128, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                      head_dim=16, num_hidden_layers=2),
    "mixtral": dict(intermediate_size=64, num_local_experts=4, num_experts_per_tok=2, num_hidden_layers=2,
                    sliding_window=None),
    "olmoe": dict(intermediate_size=64, num_experts=4, num_experts_per_tok=2, num_hidden_layers=2),
    "gpt_oss": dict(intermediate_size=64, num_local_experts=4, num_experts_per_tok=2, head_dim=16,
                    num_hidden_layers=2, sliding_window=8, layer_types=["sliding_attention", "full_attention"]),
    # the first block dense (first_k_dense_replace), the other two with routed and shared experts
    "deepseek_v3": dict(intermediate_size=128, moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2,
                        n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1, num_hidden_layers=3,
                        q_lora_rank=32, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16),
}
BLOCKS = "model.layers."  # where transformers puts the decoder blocks of every family above
# Llama 4 keeps its experts fused in a layout of its own (not transformers' experts protocol that the
# families above share): this version leaves them dense, and says so
UNKNOWN_LAYOUT = {
    "llama4_text": dict(intermediate_size=32, intermediate_size_mlp=128, num_local_experts=4, num_experts_per_tok=1,
                        head_dim=16, num_hidden_layers=2),
}


def moe_model(family: str, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    kw = MOE[family] if family in MOE else UNKNOWN_LAYOUT[family]
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **_COMMON, **kw)).eval()


def expected_counts(model) -> dict[str, int]:
    """Block parameters counted from the model's modules: all of them, the weights (2-D or more, not
    a bias), those of the ``nn.Linear`` layers (what a run prunes), and the fused expert tensors."""
    out = dict(parameters=0, weights=0, linear=0, experts=0)
    for mname, mod in model.named_modules():
        if not mname.startswith(BLOCKS):
            continue
        for pname, p in mod.named_parameters(recurse=False):
            out["parameters"] += p.numel()
            if p.dim() >= 2 and "bias" not in pname:
                out["weights"] += p.numel()
            if isinstance(mod, torch.nn.Linear) and pname == "weight" and not mname.endswith(".router"):
                out["linear"] += p.numel()  # Llama 4's router is an nn.Linear; routers stay dense
            if mname.endswith(".experts") and p.dim() == 3 and "bias" not in pname:
                out["experts"] += p.numel()
    return out


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer(V)


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    p = tmp_path_factory.mktemp("coverage-text") / "calib.txt"
    p.write_text((CORPUS + "\n") * 30, encoding="utf-8")
    return p


@pytest.fixture(scope="module", params=list(UNKNOWN_LAYOUT))
def moe(request, tmp_path_factory, tok):
    family = request.param
    d = tmp_path_factory.mktemp("coverage-models") / family
    model = moe_model(family)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return family, d, expected_counts(model)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("coverage-models") / "llama"
    tiny_model("llama", vocab_size=V).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def prune(capsys, model_dir, calib, *extra):
    code = main(["prune", "--model", str(model_dir), "--method", "wanda", "--calibration", str(calib),
                 "--nsamples", "2", "--seqlen", "16", "--device", "cpu", "--dtype", "fp32", *map(str, extra)])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_moe_refused_without_allow_partial(capsys, moe, calib, tmp_path):
    family, d, counts = moe
    out, rep = tmp_path / "out", tmp_path / "report.json"
    code, stdout, err = prune(capsys, d, calib, "--out", out, "--report", rep)
    assert code == EXIT_ERROR
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    share = round(100 * counts["experts"] / counts["parameters"])
    assert re.search(rf"ForCausalLM: the experts \(feed_forward\.experts\.gate_up_proj, feed_forward\.experts\.down_proj: "
                     rf"{share}% of the block parameters\) are fused 3-D tensors in a layout this version cannot "
                     r"prune; a run would "
                     r"leave them dense\. Pass --allow-partial to prune the rest\.$", line), line
    assert stdout == "" and not out.exists() and not rep.exists()
    assert "Pruning" not in err  # stopped before the pipeline started


def test_moe_partial_run_says_so_everywhere(capsys, moe, calib, tmp_path):
    family, d, counts = moe
    out, rep = tmp_path / "out", tmp_path / "report.json"
    code, stdout, err = prune(capsys, d, calib, "--allow-partial", "--out", out, "--report", rep)
    assert code == 0, err
    report = json.loads(rep.read_text())
    cov = report["coverage"]
    assert cov["partial"] is True and report["recipe"]["prune"]["allow_partial"] is True
    assert cov["parameters"] == counts["parameters"]
    assert cov["weight_parameters"] == counts["weights"]
    assert cov["pruned_parameters"] == counts["linear"]
    assert cov["pruned_share"] == pytest.approx(counts["linear"] / counts["weights"])
    assert cov["dense_share"] == pytest.approx(counts["experts"] / counts["parameters"])
    groups = {g["rule"]: g for g in cov["excluded"]}
    assert groups["fused_experts"]["parameters"] == counts["experts"] and groups["fused_experts"]["unprunable"]
    assert groups["routers"]["names"] == ["feed_forward.router.weight"]
    assert [g["rule"] for g in cov["excluded"] if g["unprunable"]] == ["fused_experts"]
    assert sum(g["parameters"] for g in cov["excluded"]) + cov["pruned_parameters"] == cov["parameters"]
    assert report["notes"][0].startswith(f"Partial pruning: only {round(100 * cov['pruned_share'])}% of the block weights")
    # the CLI's summary and a warning (stderr), the model card, the exported report
    summary = next(ln for ln in err.splitlines() if ln.startswith("global sparsity"))
    assert f"PARTIAL: only {100 * counts['linear'] / counts['weights']:.1f}% of the block weights" in summary
    assert "warning: Partial pruning" in err
    card = (out / "README.md").read_text()
    assert "partly pruned with wanda" in card and "**Partial pruning: only" in card
    assert json.loads((out / "prunestudio.json").read_text())["coverage"]["partial"] is True
    # the export, reloaded with plain transformers: the experts untouched, every block linear half zeros
    from transformers import AutoModelForCausalLM

    dense = dict(moe_model(family).named_parameters())
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    n_experts = 0
    for name, mod in reloaded.named_modules():
        if name.startswith(BLOCKS) and isinstance(mod, torch.nn.Linear):
            expected = 0.0 if name.endswith(".router") else 0.5  # the router stays dense
            assert (mod.weight == 0).float().mean().item() == pytest.approx(expected, abs=0.02), name
        if name.startswith(BLOCKS) and name.endswith(".experts"):
            for pname, p in mod.named_parameters(recurse=False):
                assert torch.equal(p, dense[f"{name}.{pname}"]), (name, pname)
                n_experts += p.numel() if "bias" not in pname else 0
    assert n_experts == counts["experts"]
    # the history
    h = History(tmp_path / "h.sqlite3")
    row = h.get(h.add(report))
    assert row.partial is True and row.coverage == pytest.approx(cov["pruned_share"])


def test_dense_llama_covers_every_block_weight(capsys, llama_dir, calib, tmp_path):
    rep, out = tmp_path / "report.json", tmp_path / "out"
    code, _, err = prune(capsys, llama_dir, calib, "--out", out, "--report", rep)
    assert code == 0, err
    cov = json.loads(rep.read_text())["coverage"]
    counts = expected_counts(tiny_model("llama", vocab_size=V))
    assert cov["partial"] is False and cov["pruned_share"] == 1.0
    assert cov["pruned_parameters"] == cov["weight_parameters"] == counts["linear"] == counts["weights"]
    assert {g["rule"] for g in cov["excluded"]} <= {"norms", "biases"}
    assert "PARTIAL" not in err and "Partial" not in (out / "README.md").read_text()
    assert "(100.0%)" in (out / "README.md").read_text()
    h = History(tmp_path / "h.sqlite3")
    row = h.get(h.add(json.loads(rep.read_text())))
    assert row.partial is False and row.coverage == 1.0


def test_skipped_modules_are_excluded_by_rule_not_refused(capsys, llama_dir, calib, tmp_path):
    rep = tmp_path / "report.json"
    code, _, err = prune(capsys, llama_dir, calib, "--skip", "down_proj", "--report", rep)
    assert code == 0, err
    cov = json.loads(rep.read_text())["coverage"]
    model = tiny_model("llama", vocab_size=V)
    down = sum(m.weight.numel() for n, m in model.named_modules() if n.endswith("mlp.down_proj"))
    skipped = next(g for g in cov["excluded"] if g["rule"] == "skipped")
    assert skipped["names"] == ["mlp.down_proj.weight"] and skipped["parameters"] == down
    assert not skipped["unprunable"] and cov["partial"] is False
    assert cov["pruned_parameters"] == expected_counts(model)["linear"] - down


def test_allow_partial_is_a_recipe_setting(tmp_path):
    r = Recipe(prune=PruneConfig(allow_partial=True))
    r.save(tmp_path / "r.json")
    assert Recipe.load(tmp_path / "r.json").prune.allow_partial is True
    assert Recipe.from_dict({"prune": {}}).prune.allow_partial is False
    with pytest.raises(ConfigError, match="'allow_partial' must be true or false"):
        Recipe.from_dict({"prune": {"allow_partial": "yes"}})


def test_card_of_a_report_without_coverage_is_unchanged():
    """Reports written before coverage existed still make a card (no coverage line, no partial)."""
    card = model_card({"method": "wanda", "global_sparsity": 0.5, "model": {"name": "m"}})
    assert "Coverage" not in card and "artial" not in card


def test_history_of_an_older_database_gains_the_coverage_columns(tmp_path):
    path = tmp_path / "old.sqlite3"
    con = sqlite3.connect(path)
    con.executescript("""CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, key TEXT,
        model TEXT, method TEXT, structure TEXT, sparsity REAL, calib_source TEXT, calib_nsamples INTEGER,
        calib_seqlen INTEGER, seed INTEGER, global_sparsity REAL, ppl_dense REAL, ppl_pruned REAL, seconds REAL,
        export_path TEXT, report TEXT NOT NULL);
        INSERT INTO runs (created, model, method, report) VALUES (1.0, 'old', 'wanda', '{}');""")
    con.commit()
    con.close()
    h = History(path)
    old = h.runs()[0]
    assert old.model == "old" and old.coverage is None and old.partial is False
    rid = h.add({"method": "wanda", "coverage": {"pruned_share": 0.25, "partial": True}})
    assert h.get(rid).partial is True and h.get(rid).coverage == 0.25
    h.update(rid, {"method": "wanda", "coverage": {"pruned_share": 1.0, "partial": False}})
    assert h.get(rid).partial is False and h.get(rid).coverage == 1.0


class _RMSNorm(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(n))


class _TopKRouter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(4, 8))


class _Odd(torch.nn.Module):
    """A 2-D weight that is not a linear layer and matches no rule."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(8, 6))


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = _RMSNorm(8)
        self.q_proj = torch.nn.Linear(8, 8)  # weight 64, bias 8
        self.down_proj = torch.nn.Linear(8, 8, bias=False)
        self.mixer = torch.nn.Module()
        self.mixer.conv1d = torch.nn.Conv1d(8, 8, 4, groups=8, bias=False)  # 32
        self.mixer.A_log = torch.nn.Parameter(torch.zeros(4))
        self.mixer.D = torch.nn.Parameter(torch.zeros(4))
        self.per_layer = torch.nn.Embedding(5, 8)  # 40
        self.router = _TopKRouter()  # 32
        self.odd = _Odd()  # 48


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([_Block(), _Block()])


def test_every_rule_on_a_toy_model():
    from prunestudio.core.model import architecture
    from prunestudio.core.run.partial import check_coverage, run_coverage

    model = _Toy()
    cov = run_coverage(model, PruneConfig(skip_modules=("down_proj",), allow_partial=True))
    per_block = dict(norms=8, biases=8, skipped=64, conv_kernels=32, state_space=8, embeddings=40,
                     routers=32, other=48)
    assert {g.rule: g.parameters for g in cov.groups} == {k: 2 * v for k, v in per_block.items()}
    assert cov.pruned_parameters == 2 * 64  # q_proj only: down_proj is skipped
    assert cov.weight_parameters == 2 * (64 + 64 + 32 + 40 + 32 + 48)
    assert cov.parameters == cov.pruned_parameters + sum(g.parameters for g in cov.groups)
    assert [g.rule for g in cov.dense_groups] == ["other"] and cov.partial
    assert dict((g.rule, g.names) for g in cov.groups)["state_space"] == ("mixer.A_log", "mixer.D")
    with pytest.raises(ConfigError) as e:
        check_coverage(model, PruneConfig())
    assert str(e.value) == (f"_Toy: the weights (odd.table: {round(100 * 96 / cov.parameters)}% of the block "
                            "parameters) are weights this version does not prune; a run would leave them dense. "
                            "Pass --allow-partial to prune the rest.")
    assert architecture.layout(model).names_of(0) == ("q_proj", "down_proj")


def test_routers_that_are_plain_linears_stay_dense_and_are_excluded_by_rule():
    """Qwen2-MoE's shared_expert_gate is an nn.Linear(hidden, 1): a router, never pruned, while the
    shared expert's own gate_proj (an MLP projection that widens its input) is."""
    from prunestudio.core.model import architecture
    from prunestudio.core.model.coverage import block_coverage
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("qwen2_moe", vocab_size=300, hidden_size=64, intermediate_size=128,
                               num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                               num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                               shared_expert_intermediate_size=64, max_position_embeddings=512)
    model = AutoModelForCausalLM.from_config(cfg)
    lay = architecture.layout(model)
    names = lay.names_of(0)
    assert "mlp.shared_expert.gate_proj" in names and "mlp.shared_expert_gate" not in names
    gate = lay.blocks[0].get_submodule("mlp.shared_expert_gate")
    assert isinstance(gate, torch.nn.Linear) and architecture.is_router("mlp.shared_expert_gate", gate)
    assert not architecture.is_router("mlp.shared_expert.gate_proj",
                                      lay.blocks[0].get_submodule("mlp.shared_expert.gate_proj"))
    cov = block_coverage(model, lay).to_dict()
    routers = next(g for g in cov["excluded"] if g["rule"] == "routers")
    assert routers["names"] == ["mlp.gate.weight", "mlp.shared_expert_gate.weight"]
