"""Where pruning hurts (issue 19, item 7): the Run step's heatmap coloured by each module's relative
output error, the per-row error beside the per-row sparsity in the mask view, the experts' own
errors, and the run's mean error in the History step.

Runs are real: a tiny Llama pruned with Wanda (through the window, or by the engine with its events
fed to the run panel as the worker would), so the numbers shown are checked against the events'
``info["output_error"]`` / ``info["row_error"]`` and the report's ``output_error`` summary.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import LONG, generate_calibration, load_folder, screenshot, start_run
from PySide6.QtCore import Qt

from prunestudio.core.config import PruneConfig
from prunestudio.core.events import ModulePruned, RunStarted, run_to_completion
from prunestudio.core.prune.pipeline import iter_prune
from prunestudio.gui.state import RunStatus
from prunestudio.gui.views.heatmap import ERROR, ERROR_LEVELS, SPARSITY


def _ids() -> torch.Tensor:
    return torch.randint(3, 300, (4, 32), generator=torch.Generator().manual_seed(0))


def _pruned(events: list) -> list[ModulePruned]:
    return [ev for ev in events if isinstance(ev, ModulePruned)]


def _click_cell(qtbot, heatmap, block: int, column: int) -> None:
    pos = heatmap.glw.mapFromScene(heatmap.cell_scene_pos(block, column))
    qtbot.mouseClick(heatmap.glw.viewport(), Qt.MouseButton.LeftButton, pos=pos)


@pytest.fixture
def deeper_model_dir(tmp_path, tokenizer):
    """A tiny random Llama with 8 blocks (a heatmap with some rows), saved as a Hugging Face folder."""
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import tiny_config

    cfg = tiny_config("llama", len(tokenizer))
    cfg.num_hidden_layers = 8
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    d = tmp_path / "models" / "tiny-llama-8"
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def test_a_wanda_run_colours_the_heatmap_by_output_error(window, qtbot, monkeypatch, deeper_model_dir,
                                                        screenshots, error_dialogs):
    load_folder(qtbot, window, monkeypatch, deeper_model_dir)
    generate_calibration(qtbot, window, nsamples=8, seqlen=32)
    p = window.prune_panel
    p.method.setCurrentIndex(p.method.findData("wanda"))
    p.sparsity.setValue(50.0)
    panel = window.run_panel
    panel.eval_dense.setChecked(False)
    panel.eval_pruned.setChecked(False)
    worker = start_run(qtbot, window)
    events: list = []
    worker.yielded.connect(events.append)
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    assert window.state.run_status == RunStatus.DONE
    pruned = _pruned(events)
    assert len(pruned) == 8 * 7

    heat = panel.heatmap
    assert heat.error_available()
    # every cell of the error layer is its module's event's error; the sparsity layer unchanged
    errors, sparsity = heat.values(ERROR), heat.values(SPARSITY)
    for ev in pruned:
        j = heat.names.index(ev.name)
        assert errors[ev.block, j] == np.float32(ev.info["output_error"])
        assert sparsity[ev.block, j] == np.float32(ev.sparsity)
    assert not np.isnan(errors).any()
    assert 0.0 < float(errors.min()) and float(errors.max()) < 1.0
    # at a uniform 50% the sparsity is flat; the errors are not
    assert np.ptp(sparsity) < 0.02 and np.ptp(errors) > 0.05

    # the selection survives switching layers; the image, levels, colours and labels follow the layer
    col = heat.names.index("mlp.down_proj")
    _click_cell(qtbot, heat, 5, col)
    assert panel.mask.current == (5, "mlp.down_proj")
    marked = heat.marker.rect()
    assert heat.layer == SPARSITY
    np.testing.assert_array_equal(np.asarray(heat.image.image), sparsity)
    sparsity_lut = np.asarray(heat.image.lut).copy()
    heat.layer_choice.setCurrentIndex(heat.layer_choice.findData(ERROR))
    assert heat.layer == ERROR
    np.testing.assert_array_equal(np.asarray(heat.image.image), errors)
    assert tuple(heat.image.levels) == ERROR_LEVELS and tuple(heat.bar.levels()) == ERROR_LEVELS
    assert not np.array_equal(np.asarray(heat.image.lut), sparsity_lut)
    assert "calibration tokens" in heat.bar.axis.labelText and "\u2016WX\u2016" in heat.bar.axis.labelText
    assert "Relative output error" in heat.plot.titleLabel.text
    assert heat.marker.isVisible() and heat.marker.rect() == marked
    assert panel.mask.current == (5, "mlp.down_proj")
    # the hover gives both numbers
    heat._moved(heat.cell_scene_pos(5, col))
    ev = next(e for e in pruned if e.block == 5 and e.name == "mlp.down_proj")
    assert f"{ev.sparsity:.1%} zeros" in heat.hover.text()
    assert f"output error {ev.info['output_error']:.3f}" in heat.hover.text()

    # the mask view: the per-row errors of that module beside its per-row sparsity
    mask = panel.mask
    np.testing.assert_array_equal(mask.row_error, ev.info["row_error"])
    assert len(mask.row_error) == ev.shape[0]
    counts = np.asarray(mask.err_hist.getData()[1])
    assert counts.sum() == ev.shape[0]
    assert f"output error {ev.info['output_error']:.3f}" in mask.title.text()

    window.show_step(3)
    panel.tabs.setCurrentWidget(panel.mask)
    screenshot(window, screenshots / "run-output-error.png")

    # back to sparsity: the same cell still selected
    heat.layer_choice.setCurrentIndex(heat.layer_choice.findData(SPARSITY))
    assert heat.layer == SPARSITY and tuple(heat.image.levels) == (0.0, 1.0)
    assert heat.marker.rect() == marked

    # History: the run's mean output error, equal to the report's, in its own column and the plot
    report = window.state.run.report
    mean = report["output_error"]["mean"]
    assert mean == pytest.approx(float(np.mean([e.info["output_error"] for e in pruned])), rel=1e-6)
    window.show_step(5)
    h = window.history_panel
    qtbot.waitUntil(lambda: h.table.rowCount() == 1, timeout=5000)
    cols = {h.table.horizontalHeaderItem(c).text(): c for c in range(h.table.columnCount())}
    cell = h.table.item(0, cols["Output error"])
    assert cell.text() == f"{mean:.3f}" and cell.value == pytest.approx(mean)
    assert report["output_error"]["max_module"] in cell.toolTip()
    h.metric.setCurrentIndex(h.metric.findData("error"))
    (pts,) = h.series(h.visible_rows(), "error").values()
    assert pts[0][1] == pytest.approx(mean)
    assert "output error" in h.plot.getAxis("left").labelText
    screenshot(window, screenshots / "history-output-error.png")
    assert error_dialogs == []


def test_a_run_without_calibration_data_disables_the_error_layer(window, make_model):
    panel = window.run_panel
    heat = panel.heatmap
    assert not heat.error_available()  # no run yet
    assert heat.set_layer(ERROR) is False and heat.layer == SPARSITY

    run_to_completion(iter_prune(make_model("llama"), _ids(), PruneConfig(method="wanda", sparsity=0.5)),
                      panel._event)
    assert heat.error_available()
    assert heat.set_layer(ERROR) and heat.layer == ERROR

    # magnitude given a calibration set: the first module comes without an error, the layer goes
    seen: list = []

    def feed(ev) -> None:
        panel._event(ev)
        if isinstance(ev, RunStarted):
            seen.append(("started", heat.error_available()))
        elif isinstance(ev, ModulePruned):
            assert "output_error" not in ev.info
            seen.append(("pruned", heat.error_available()))

    run_to_completion(iter_prune(make_model("llama"), _ids(), PruneConfig(method="magnitude", sparsity=0.5)), feed)
    assert seen[0] == ("started", True) and seen[1] == ("pruned", False)
    assert heat.layer == SPARSITY and heat.layer_choice.currentData() == SPARSITY
    assert np.isnan(heat.values(ERROR)).all()
    i = heat.layer_choice.findData(ERROR)
    why = heat.layer_choice.itemData(i, Qt.ItemDataRole.ToolTipRole)
    assert "without calibration data" in why and why in heat.layer_choice.toolTip()
    assert not heat.layer_choice.model().item(i).isEnabled()
    assert heat.set_layer(ERROR) is False and heat.layer == SPARSITY
    heat._moved(heat.cell_scene_pos(0, 0))
    assert "output error not measured" in heat.hover.text()
    panel._cell_clicked(0, heat.names.index("mlp.down_proj"))
    assert panel.mask.row_error is None and "not measured" in panel.mask.no_error.textItem.toPlainText()


def test_magnitude_without_data_is_unavailable_from_the_start(window, make_model):
    panel = window.run_panel
    states: list[bool] = []

    def feed(ev) -> None:
        panel._event(ev)
        if isinstance(ev, RunStarted):
            states.append(panel.heatmap.error_available())

    run_to_completion(iter_prune(make_model("llama"), None, PruneConfig(method="magnitude", sparsity=0.5)), feed)
    assert states == [False]
    assert not panel.heatmap.error_available()


def test_the_experts_view_shows_each_experts_error(window, qtbot):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
    from test_coverage import moe_model

    events: list = []
    run_to_completion(iter_prune(moe_model("qwen3_moe"), _ids(), PruneConfig(method="wanda", sparsity=0.5)),
                      events.append)
    panel = window.run_panel
    window.show_step(3)
    for ev in events:
        panel._event(ev)
    down = next(ev for ev in _pruned(events) if ev.block == 0 and ev.name == "mlp.experts[*].down_proj")
    per_expert = down.info["experts"]["output_error"]
    assert len(per_expert) == 4
    heat = panel.heatmap
    # the heatmap's experts cell: the experts' errors combined, as the event says
    assert heat.values(ERROR)[0, heat.names.index(down.name)] == np.float32(down.info["output_error"])
    _click_cell(qtbot, heat, 0, heat.names.index(down.name))
    view = panel.experts
    assert view.current == (0, "mlp.experts")
    row = view.kinds.index("down_proj")
    np.testing.assert_allclose(view.errors[row], per_expert, rtol=1e-6)
    assert "output error" in view.title.text()
    assert f"down {per_expert[2]:.3f}" in view.describe(2)
    # the mask shown is one expert's: titled with that expert's own error
    expert = panel.previews[(0, down.name)]["expert"]
    assert expert is not None
    assert f"output error {per_expert[expert]:.3f}" in panel.mask.title.text()
