"""The method registry: adding a method is registering it, nothing else.

A toy method defined and registered here (it removes the *largest* weights of every row, the
opposite of magnitude, and insists on the statistics it declares) runs through the command line
and through the GUI's method panel and worker without a change to any other file. The built-ins'
declarations are checked against what the pipeline really gathers, and the memory estimate
against what a refinement (DSnoT on SparseGPT's mask) really builds.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CORPUS, byte_tokenizer, tiny_model
from prunestudio.core.config import PruneConfig
from prunestudio.core.errors import ConfigError
from prunestudio.core.events import run_to_completion
from prunestudio.core.model import architecture
from prunestudio.core.prune import stats as stats_mod
from prunestudio.core.prune.memory import estimate_run_memory, module_shapes
from prunestudio.core.prune.methods import registry
from prunestudio.core.prune.methods.interface import ModuleOutcome
from prunestudio.core.prune.needs import StatsNeeds
from prunestudio.core.prune.pipeline import iter_prune

TOY = "toy"
CALLS: list[tuple[str, int]] = []  # (module name, calibration tokens its statistics saw)


def prune_largest(weight, stats, sparsity, n, m, ctx):
    """Remove the ``floor(in * sparsity)`` largest-magnitude weights of every row (unstructured only)."""
    if stats is None or stats.sq_norm is None or stats.nsamples == 0:
        raise AssertionError(f"{ctx.name}: the statistics the toy method declares were not gathered")
    CALLS.append((ctx.name, stats.nsamples))
    k = int(weight.shape[1] * sparsity)
    idx = torch.topk(weight.abs(), k, dim=1).indices
    mask = torch.zeros(weight.shape, dtype=torch.bool, device=weight.device).scatter_(1, idx, True)
    return ModuleOutcome(None, mask, {"toy": k})


@pytest.fixture
def toy():
    CALLS.clear()
    method = registry.register(registry.Method(
        TOY, "Toy", "Removes the largest weights of every row (a test's method).",
        prune=prune_largest, needs=StatsNeeds(sq_norm=True)))
    yield method
    registry.unregister(TOY)
    CALLS.clear()


def _ids(vocab: int, n: int = 4, seqlen: int = 16) -> torch.Tensor:
    return torch.randint(3, vocab, (n, seqlen), generator=torch.Generator().manual_seed(0))


def _weights(model) -> dict[str, torch.Tensor]:
    lay = architecture.layout(model)
    return {f"{i}.{name}": architecture.get_weight_2d(block.get_submodule(name)).detach().clone()
            for i, block in enumerate(lay.blocks) for name in lay.module_names}


def assert_largest_removed(dense: dict[str, torch.Tensor], pruned: dict[str, torch.Tensor], sparsity: float,
                           only: tuple[str, ...] = ()) -> None:
    """Every row lost exactly its ``floor(in * sparsity)`` largest weights; the others are untouched."""
    checked = 0
    for key, w in dense.items():
        if only and not key.split(".", 1)[1].startswith(only):
            continue
        p = pruned[key]
        removed = p == 0
        assert (removed.sum(dim=1) == int(w.shape[1] * sparsity)).all(), key
        smallest_removed = w.abs().masked_fill(~removed, float("inf")).min(dim=1).values
        largest_kept = w.abs().masked_fill(removed, -1.0).max(dim=1).values
        assert (smallest_removed > largest_kept).all(), key
        assert torch.equal(p[~removed], w[~removed]), key
        checked += 1
    assert checked


# ---- registering ---------------------------------------------------------------------------------

def test_a_registered_method_is_a_valid_setting_and_goes_away_when_unregistered(toy):
    cfg = PruneConfig(method=TOY)
    assert TOY in registry.names() and TOY in registry.names(refining=False)
    assert cfg.label() == TOY and cfg.needs_calibration and cfg.passes_once is False
    assert PruneConfig(method="dsnot", dsnot_init=TOY).label() == f"dsnot[{TOY}]"
    with pytest.raises(ValueError, match="already registered"):
        registry.register(toy)
    registry.unregister(TOY)
    with pytest.raises(ConfigError) as e:
        PruneConfig(method=TOY)
    assert str(e.value) == "Unknown pruning method 'toy' (choose from magnitude, wanda, sparsegpt, dsnot)."
    with pytest.raises(ConfigError, match="DSnoT's initial mask must come from magnitude, wanda, sparsegpt"):
        PruneConfig(method="wanda", dsnot_init=TOY)  # checked whatever the method, as every setting is


@pytest.mark.parametrize("bad,match", [
    (dict(name="Toy two"), "lower-case"),
    (dict(hessian=True), "must gather one"),
    (dict(one_pass=None), "only a method that refines"),
])
def test_impossible_declarations_are_refused(bad, match):
    kw = dict(name="toy2", label="Toy", description="x.", prune=prune_largest, needs=StatsNeeds()) | bad
    with pytest.raises(ValueError, match=match):
        registry.Method(**kw)


# ---- the toy method through the command line and the GUI ---------------------------------------

def test_the_toy_method_through_the_cli(toy, tmp_path, capsys):
    from prunestudio.core.cli.commands import main
    from transformers import AutoModelForCausalLM

    tok = byte_tokenizer(300)
    model_dir, out, report = tmp_path / "tiny-llama", tmp_path / "pruned", tmp_path / "report.json"
    tiny_model("llama", vocab_size=len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    calib = tmp_path / "calib.txt"
    calib.write_text((CORPUS + "\n") * 30, encoding="utf-8")

    code = main(["prune", "--model", str(model_dir), "--method", TOY, "--sparsity", "0.25",
                 "--calibration", str(calib), "--nsamples", "2", "--seqlen", "16", "--device", "cpu",
                 "--dtype", "fp32", "--out", str(out), "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 0, err
    dense = _weights(AutoModelForCausalLM.from_pretrained(model_dir))
    pruned = _weights(AutoModelForCausalLM.from_pretrained(out))
    assert_largest_removed(dense, pruned, 0.25)
    assert len(CALLS) == len(dense) and all(tokens == 2 * 16 for _name, tokens in CALLS)
    assert TOY in json.dumps(json.loads(report.read_text(encoding="utf-8")))


def test_the_cli_offers_the_toy_method(toy, capsys):
    from prunestudio.core.cli.commands import build_parser

    args = build_parser().parse_args(["prune", "--method", TOY, "--dsnot-init", TOY])
    assert (args.method, args.dsnot_init) == (TOY, TOY)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "toy: Removes the largest weights of every row (a test's method)." in help_text
    assert "(the default for SparseGPT, and for DSnoT on SparseGPT's mask)" in help_text


def test_the_toy_method_from_the_gui_panel_through_the_worker(toy, qtbot, tmp_path, monkeypatch, make_model, tokenizer):
    pytest.importorskip("PySide6")
    from PySide6.QtCore import QSettings

    for var, sub in (("PRUNESTUDIO_DATA", "data"), ("PRUNESTUDIO_CACHE", "cache"), ("PRUNESTUDIO_LOG_DIR", "logs")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("PRUNESTUDIO_SETTINGS", str(tmp_path / "settings" / "prunestudio.ini"))
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    from prunestudio.core.events import ModulePruned
    from prunestudio.gui.panels.prune import PrunePanel
    from prunestudio.gui.state import AppState
    from prunestudio.gui.worker import Worker

    state = AppState(tmp_path / "data" / "history.sqlite3")
    panel = PrunePanel(state)
    qtbot.addWidget(panel)
    i = panel.method.findData(TOY)
    assert i >= 0 and panel.method.itemText(i) == "Toy"
    panel.method.setCurrentIndex(i)
    panel.sparsity.setValue(25.0)
    assert panel.method_text.text() == "Toy: Removes the largest weights of every row (a test's method)."
    assert not panel.dsnot.isEnabled() and not panel.sgpt.isEnabled()  # it reads neither group
    panel.method.setCurrentIndex(panel.method.findData("dsnot"))
    panel.dsnot_init.setCurrentText(TOY)
    assert panel.dsnot.isEnabled() and not panel.sgpt.isEnabled()
    panel.method.setCurrentIndex(i)
    cfg = state.prune_config
    assert cfg is not None and (cfg.method, cfg.sparsity) == (TOY, 0.25)

    model = make_model("llama")
    dense = _weights(model)
    worker = Worker(iter_prune, model, _ids(len(tokenizer)), cfg, name="toy-prune")
    events, returned = [], []
    worker.yielded.connect(events.append)
    worker.returned.connect(returned.append)
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        worker.start()
    assert returned and returned[0].method == TOY
    assert_largest_removed(dense, _weights(model), 0.25)
    pruned = [e for e in events if isinstance(e, ModulePruned)]
    assert len(pruned) == len(dense) and {e.info["toy"] for e in pruned} == {64 // 4, 128 // 4}


def test_dsnot_refines_a_registered_method_s_mask(toy, make_model, tokenizer):
    """A refinement takes any registered method's mask: the MLP it skips keeps the toy's mask."""
    cfg = PruneConfig(method="dsnot", dsnot_init=TOY, sparsity=0.25, dsnot_skip="mlp")
    assert registry.stats_needs(cfg) == StatsNeeds(sq_norm=True, moments=True, batch_var=True)
    assert cfg.passes_once is False and not registry.builds_hessian(cfg)
    model = make_model("llama")
    dense = _weights(model)
    res = run_to_completion(iter_prune(model, _ids(len(tokenizer)), cfg))
    assert res.method == "dsnot[toy]" and len(CALLS) == len(dense)
    assert_largest_removed(dense, _weights(model), 0.25, only=("mlp.",))


# ---- the built-ins' declarations -----------------------------------------------------------------

GATHERED = {  # what the pipeline must gather, written out (not derived from the registry)
    "magnitude": None,
    "wanda": StatsNeeds(sq_norm=True),
    "sparsegpt": StatsNeeds(sq_norm=True, hessian=True),
    "dsnot[magnitude]": StatsNeeds(sq_norm=True, moments=True, batch_var=True),
    "dsnot[wanda]": StatsNeeds(sq_norm=True, moments=True, batch_var=True),
    "dsnot[sparsegpt]": StatsNeeds(sq_norm=True, moments=True, hessian=True, batch_var=True),
}


@pytest.mark.parametrize("label", sorted(GATHERED))
def test_each_built_in_declares_what_the_pipeline_gathers(label, make_model, tokenizer, monkeypatch):
    method, _, init = label.partition("[")
    cfg = PruneConfig(method=method, dsnot_init=init.rstrip("]") or "wanda", batch_size=2)
    assert cfg.label() == label
    assert registry.stats_needs(cfg) == GATHERED[label]
    assert registry.builds_hessian(cfg) == (GATHERED[label] is not None and GATHERED[label].hessian)
    seen = []
    real_init = stats_mod.InputStats.__init__

    def spy(self, in_features, needs, device):
        seen.append(needs)
        real_init(self, in_features, needs, device)

    monkeypatch.setattr(stats_mod.InputStats, "__init__", spy)
    run_to_completion(iter_prune(make_model("llama"), _ids(len(tokenizer)), cfg))
    if GATHERED[label] is None:
        assert seen == []
    else:
        assert seen and set(seen) == {GATHERED[label]}


def test_the_memory_estimate_counts_dsnot_s_hessian_on_sparsegpt_s_mask(make_model):
    """DSnoT on SparseGPT's mask gathers and factorises Hessians: the estimate counts them."""
    from prunestudio.core.model.loading import describe

    model = make_model("llama")
    info = {**describe(model), "module_shapes": module_shapes(model)}
    on_wanda = estimate_run_memory(info, 8, 32, PruneConfig(method="dsnot", dsnot_init="wanda"), 4, 8)
    on_sgpt = estimate_run_memory(info, 8, 32, PruneConfig(method="dsnot", dsnot_init="sparsegpt"), 4, 8)
    # q/k/v share one input, gate/up another: 4 distinct inputs, 3 of width 64 and 1 of 128;
    # norms, sum, sum of squares and the per-sequence variances are 4 vectors each, the Hessian in*in
    assert on_wanda["statistics"] == 4 * 4 * (3 * 64 + 128)
    assert on_sgpt["statistics"] == on_wanda["statistics"] + 4 * (3 * 64 * 64 + 128 * 128)
    assert on_sgpt["block"] - on_wanda["block"] == 3 * 128 * 128 * 4  # damped copy, factor, inverse
    assert estimate_run_memory(info, 8, 32, "dsnot", 4, 8) == on_wanda  # a name: its default settings
