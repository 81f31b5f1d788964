"""The Run step drills from a block of a mixture-of-experts model into its experts
(gui/views/experts.py): each expert's sparsity per kind of matrix, the tokens routed to it, and
the experts pruned with all the block's tokens because they received fewer than K.

A tiny random-init Qwen3-MoE (and a DeepSeek-V3 whose first block is dense) is pruned by the
engine and its events fed to the run panel as the worker would. What the view shows is checked
against numbers computed here: the zeros read from the model's own fused expert tensors, and the
routed tokens from the block's router run by the test itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import screenshot
from PySide6.QtCore import QPointF

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from test_coverage import moe_model  # noqa: E402

from prunestudio.core.config import PruneConfig  # noqa: E402
from prunestudio.core.events import ModulePruned, run_to_completion  # noqa: E402
from prunestudio.core.prune.pipeline import iter_prune  # noqa: E402
from prunestudio.gui.views.experts import ExpertsView  # noqa: E402
from prunestudio.gui.views.heatmap import short_names  # noqa: E402

KINDS = ("gate_proj", "up_proj", "down_proj")
QWEN = ("self_attn.q_proj", "self_attn.o_proj", "mlp.experts[*].gate_proj", "mlp.experts[*].up_proj",
        "mlp.experts[*].down_proj")


def _ids() -> torch.Tensor:
    return torch.randint(3, 300, (4, 32), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def routed_counts(model, ids: torch.Tensor, block: int) -> list[int]:
    """Tokens the router of (dense) block ``block`` sends each expert: its top-k of the softmax
    logits, computed here from the router's weight on the MLP's input."""
    mlp = model.model.layers[block].mlp
    seen: list[torch.Tensor] = []
    h = mlp.register_forward_pre_hook(lambda mod, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    try:
        model(ids)
    finally:
        h.remove()
    x = torch.cat(seen)
    top = torch.topk(x @ mlp.gate.weight.t(), model.config.num_experts_per_tok, dim=-1).indices
    return [int((top == e).any(dim=-1).sum()) for e in range(mlp.gate.weight.shape[0])]


def zeros_per_expert(experts: torch.nn.Module) -> np.ndarray:
    """[kind, expert] fraction of zeros, read from the fused tensors (gate rows first, then up)."""
    gu, down = experts.gate_up_proj, experts.down_proj
    half = gu.shape[1] // 2
    mats = (gu[:, :half], gu[:, half:], down)
    return np.array([[float((m[e] == 0).float().mean()) for e in range(gu.shape[0])] for m in mats])


def test_expert_columns_get_short_labels_that_say_experts():
    assert short_names(QWEN) == ["q_proj", "o_proj", "experts·gate_proj", "experts·up_proj", "experts·down_proj"]
    deepseek = ("mlp.down_proj", "mlp.experts[*].down_proj", "mlp.shared_experts.down_proj")
    assert short_names(deepseek) == ["mlp.down_proj", "experts·down_proj", "shared_experts.down_proj"]
    # dense names are labelled as before
    assert short_names(("self_attn.q_proj", "mlp.down_proj")) == ["q_proj", "down_proj"]


def _click_cell(qtbot, heatmap, block: int, column: int) -> None:
    from PySide6.QtCore import Qt

    pos = heatmap.glw.mapFromScene(heatmap.cell_scene_pos(block, column))
    qtbot.mouseClick(heatmap.glw.viewport(), Qt.MouseButton.LeftButton, pos=pos)


@pytest.fixture(scope="module")
def qwen_run():
    """A Qwen3-MoE pruned with Wanda, K set so that some experts of block 0 fall short."""
    ids = _ids()
    model = moe_model("qwen3_moe")
    counts = routed_counts(model, ids, 0)
    k = sorted(counts)[1] + 1  # the two experts with the fewest tokens fall below K
    events: list = []
    run_to_completion(iter_prune(model, ids, PruneConfig(method="wanda", sparsity=0.5, expert_min_tokens=k)),
                      events.append)
    return model, counts, k, events


def test_a_moe_run_drills_from_a_block_into_its_experts(window, qtbot, qwen_run, screenshots):
    model, counts, k, events = qwen_run
    panel = window.run_panel
    window.show_step(3)
    for ev in events:
        panel._event(ev)
    heat = panel.heatmap
    names = heat.names
    down = names.index("mlp.experts[*].down_proj")
    ticks = dict((round(x - 0.5), s) for x, s in heat.plot.getAxis("bottom")._tickLevels[0])
    assert ticks[down] == "experts\ndown_proj"  # the axis puts it on two lines
    assert panel.tabs.isTabEnabled(panel.tabs.indexOf(panel.experts))
    # hovering an experts cell names the full module
    heat._moved(heat.cell_scene_pos(0, down))
    assert heat.glw.toolTip() == "mlp.experts[*].down_proj"
    assert "every expert" in heat.hover.text()

    _click_cell(qtbot, heat, 0, down)
    view = panel.experts
    assert panel.tabs.currentWidget() is view
    assert view.current == (0, "mlp.experts")
    assert view.kinds == list(KINDS)
    # the image: one row per kind, one column per expert, the zeros of the model's own tensors
    expected = zeros_per_expert(model.model.layers[0].mlp.experts)
    shown = np.asarray(view.image.image)
    assert shown.shape == (3, 4)
    np.testing.assert_allclose(shown, expected, atol=1e-6)
    assert tuple(view.image.levels) == (0.0, 1.0)
    # the bars: the routed tokens, computed from the router here
    short = [e for e in range(4) if counts[e] < k]
    assert len(short) == 2
    bars = {}
    for item in (view.routed_bars, view.short_bars):
        for x, h in zip(item.opts["x"], item.opts["height"]):
            bars[round(x - 0.5)] = (h, item is view.short_bars)
    assert sorted(bars) == [0, 1, 2, 3]
    assert [bars[e][0] for e in range(4)] == counts
    # the experts below K are the hatched ones, and the legend and the line at K say what that means
    assert [e for e in range(4) if bars[e][1]] == short == view.short_experts()
    assert view.short_bars.opts["brush"].style() != view.routed_bars.opts["brush"].style()
    assert view.threshold.isVisible() and view.threshold.value() == k
    assert "fewer than K routed tokens: pruned with statistics from all the block's tokens" in view.legend_lines
    assert not view.legend.isHidden() and not view.no_tokens.isVisible()
    assert f"2 of them received fewer than K = {k} routed tokens" in view.title.text()
    assert f"K = {k} routed tokens" in view.k_label.text()
    # hovering an expert says its numbers
    view._moved(view.tokens_plot.vb.mapViewToScene(QPointF(short[0] + 0.5, 1)))
    assert f"{counts[short[0]]} routed token" in view.hover.text() and "all the block's tokens" in view.hover.text()
    # the mask tab shows the previewed expert, titled with that expert's own sparsity
    assert panel.mask.current == (0, "mlp.experts[0].down_proj")
    assert f"{expected[2, 0]:.1%} zeros" in panel.mask.title.text()

    window.resize(1280, 820)
    screenshot(window, screenshots / "run-experts.png")

    # block 1: the view follows the click
    _click_cell(qtbot, heat, 1, names.index("mlp.experts[*].gate_proj"))
    assert view.current == (1, "mlp.experts")
    np.testing.assert_allclose(np.asarray(view.image.image), zeros_per_expert(model.model.layers[1].mlp.experts),
                               atol=1e-6)
    # a non-expert cell still shows its mask preview, in the mask tab
    q = names.index("self_attn.q_proj")
    _click_cell(qtbot, heat, 1, q)
    assert panel.tabs.currentWidget() is panel.mask
    assert panel.mask.current == (1, "self_attn.q_proj")
    w = model.model.layers[1].self_attn.q_proj.weight
    assert f"{float((w == 0).float().mean()):.1%} zeros" in panel.mask.title.text()
    assert view.current == (1, "mlp.experts")  # the experts view keeps the last block shown


def test_magnitude_and_a_dense_first_block(window, qtbot):
    """DeepSeek-V3: block 0 is a dense MLP (no experts columns there), the others have routed and
    shared experts; magnitude counts no tokens."""
    model = moe_model("deepseek_v3")
    panel = window.run_panel
    window.show_step(3)
    run_to_completion(iter_prune(model, _ids(), PruneConfig(method="magnitude", sparsity=0.5)), panel._event)
    heat = panel.heatmap
    names = heat.names
    down = names.index("mlp.experts[*].down_proj")
    assert heat.is_absent(0, down) and not heat.is_absent(1, down)
    # clicking the absent cell does nothing; the dense MLP's cell of block 0 shows its mask
    before = (panel.tabs.currentWidget(), panel.experts.current, panel.mask.current, panel.pinned)
    _click_cell(qtbot, heat, 0, down)
    assert (panel.tabs.currentWidget(), panel.experts.current, panel.mask.current, panel.pinned) == before
    dense = names.index("mlp.down_proj")
    _click_cell(qtbot, heat, 0, dense)
    assert panel.tabs.currentWidget() is panel.mask and panel.mask.current == (0, "mlp.down_proj")
    # a shared expert is an ordinary MLP: its cell shows its mask, not the experts view
    shared = names.index("mlp.shared_experts.down_proj")
    _click_cell(qtbot, heat, 2, shared)
    assert panel.tabs.currentWidget() is panel.mask and panel.mask.current == (2, "mlp.shared_experts.down_proj")
    _click_cell(qtbot, heat, 2, down)
    view = panel.experts
    assert panel.tabs.currentWidget() is view and view.current == (2, "mlp.experts")
    np.testing.assert_allclose(np.asarray(view.image.image), zeros_per_expert(model.model.layers[2].mlp.experts),
                               atol=1e-6)
    assert view.tokens is None and len(view.routed_bars.opts["height"]) == 0 and len(view.short_bars.opts["height"]) == 0
    assert view.no_tokens.isVisible() and view.no_tokens.textItem.toPlainText() == "no calibration data: tokens not counted"
    assert view.legend.isHidden() and not view.threshold.isVisible()


def test_a_dense_run_leaves_the_experts_tab_off(window):
    panel = window.run_panel
    from prunestudio.core.events import RunStarted

    ev = RunStarted(method="magnitude", num_blocks=2, module_names=("self_attn.q_proj", "mlp.down_proj"),
                    block_sparsity=(0.5, 0.5), nsamples=0, seqlen=0, device="cpu", block_module_names=())
    panel._event(ev)
    assert not panel.tabs.isTabEnabled(panel.tabs.indexOf(panel.experts))


def test_events_arriving_out_of_order_and_a_block_not_pruned_yet(configured_app, qtbot):
    """The view alone, fed synthetic events: a kind missing, a block not pruned, an expert with 0 tokens."""
    view = ExpertsView()
    qtbot.addWidget(view)
    info = {"experts": {"sparsity": [0.5, 0.25, 0.75], "tokens": [40, 0, 7], "rule": ["routed", "all tokens",
                                                                                          "all tokens"],
                        "min_tokens": 8}}
    assert view.record(3, "mlp.experts[*].down_proj", info)
    assert not view.record(3, "mlp.down_proj", {})  # not an experts name
    assert view.show_module(3, "mlp.experts[*].up_proj")  # any kind of the module shows the block
    assert view.kinds == ["down_proj"]
    np.testing.assert_allclose(np.asarray(view.image.image), [[0.5, 0.25, 0.75]])
    assert list(view.short_bars.opts["height"]) == [0, 7] and list(view.routed_bars.opts["height"]) == [40]
    assert view.short_experts() == [1, 2]
    # expert 1's bar has no height: its shaded column still marks it
    assert list(view.short_band.opts["x"]) == [1.5, 2.5] and all(h > 0 for h in view.short_band.opts["height"])
    assert view.show_module(4, "mlp.experts[*].down_proj")
    assert "not pruned yet" in view.title.text() and view.image.image is None
    assert not view.show_module(3, "self_attn.q_proj")
    assert view.preview_of(3, "mlp.experts[*].down_proj", 2, 0.5) == ("mlp.experts[2].down_proj", 0.75)
    assert view.preview_of(3, "mlp.down_proj", None, 0.5) == ("mlp.down_proj", 0.5)


def test_the_event_format_read_is_the_engines(qwen_run):
    """The keys the view reads are the ones the engine's events carry (a guard on the format)."""
    *_, events = qwen_run
    ex = [ev for ev in events if isinstance(ev, ModulePruned) and "[*]" in ev.name]
    assert ex and all(set(ev.info["experts"]) >= {"sparsity", "tokens", "rule", "min_tokens"} for ev in ex)
    assert all(ev.info.get("preview_expert") == 0 for ev in ex)


def test_a_run_through_the_worker_fills_the_experts_view(window, qtbot, monkeypatch, tmp_path, tokenizer):
    """The whole path of the app: a tiny Mixtral folder loaded in step 1, pruned by magnitude from
    the Start button (events arrive through the worker's signal), a click on an experts cell."""
    from _gui_helpers import LONG, load_folder, start_run
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("mixtral", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=512,
                               sliding_window=None, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    d = tmp_path / "models" / "tiny-mixtral"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    tokenizer.save_pretrained(d)
    load_folder(qtbot, window, monkeypatch, d)
    p = window.prune_panel
    p.method.setCurrentIndex(p.method.findData("magnitude"))
    p.sparsity.setValue(50.0)
    panel = window.run_panel
    panel.eval_dense.setChecked(False)
    panel.eval_pruned.setChecked(False)
    worker = start_run(qtbot, window)
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    heat = panel.heatmap
    up = heat.names.index("mlp.experts[*].up_proj")
    _click_cell(qtbot, heat, 1, up)
    view = panel.experts
    assert panel.tabs.currentWidget() is view and view.current == (1, "mlp.experts")
    model = window.state.loaded.model
    np.testing.assert_allclose(np.asarray(view.image.image), zeros_per_expert(model.model.layers[1].mlp.experts),
                               atol=1e-6)
    assert view.tokens is None and view.no_tokens.isVisible()
