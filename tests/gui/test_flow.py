"""The whole flow through the window on a tiny model, as a user would click it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import LONG, click, generate_calibration, load_folder, screenshot, set_eval, start_run
from prunestudio.core.calib.selfgen import FilteringDone, SampleGenerated
from prunestudio.core.events import ModulePruned
from prunestudio.gui.state import ModelStatus, RunStatus
from prunestudio.gui.views.sample_table import BY_HAND
from PySide6.QtCore import Qt
from PySide6.QtGui import QPalette
from PySide6.QtTest import QTest


def _grab_steps(window, qtbot, folder, prefix: str) -> None:
    for i in range(6):
        window.show_step(i)
        screenshot(window, folder / f"{prefix}{i + 1}.png")


def test_whole_flow(window, qtbot, monkeypatch, tiny_model_dir, eval_file, tmp_path, screenshots,
                    error_dialogs):
    st = window.state
    # ---- 1. model: pick the folder, load in the background
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    assert st.model_status == ModelStatus.DENSE
    assert window.model_panel.info_labels["architecture"].text().startswith("LlamaForCausalLM")
    assert window.model_panel.info_labels["blocks"].text() == "3"
    assert window.model_panel.mem_labels["total"].text() != "–"
    assert window.steps.kinds()["model"] == "ok"

    # ---- 2. calibration: self-generated, samples arrive one by one, filtered ones greyed
    window.show_step(1)
    events: list = []
    generate_calibration(qtbot, window, nsamples=8, seqlen=32, events=events)
    gen = [e for e in events if isinstance(e, SampleGenerated)]
    filt = [e for e in events if isinstance(e, FilteringDone)]
    cs = st.calib
    assert len(gen) == len(cs.samples) >= 8
    assert filt and len(filt[0].dropped) == len(cs.samples) - 8
    assert len(cs) == 8
    calib = window.calib_panel
    model = calib.preview.model
    assert model.rowCount() == len(cs.samples)
    dropped_rows = [i for i, s in enumerate(cs.samples) if s.dropped]
    assert dropped_rows, "self-generation with drop 20% leaves some samples out"
    grey = model.data(model.index(dropped_rows[0], 5), Qt.ItemDataRole.ForegroundRole)
    assert grey is not None and grey.color() == window.palette().color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text)
    assert "perplexity" in model.data(model.index(dropped_rows[0], 4))
    assert calib.stats.labels["samples"].text().startswith("8 ")
    # perplexity and n-gram statistics are computed off the GUI thread
    qtbot.waitUntil(lambda: calib.stats.labels["distinct"].text() != "–", timeout=10_000)

    # drop one kept sample by hand with the Delete key; the text view follows the selection
    kept_row = next(i for i, s in enumerate(cs.samples) if not s.dropped)
    table = calib.preview.table
    table.setFocus()
    table.selectRow(kept_row)
    assert calib.preview.text.toPlainText().endswith(cs.samples[kept_row].text)
    QTest.keyClick(table, Qt.Key.Key_Delete)
    assert cs.samples[kept_row].dropped and cs.samples[kept_row].drop_reason == BY_HAND
    assert len(cs) == 7
    assert calib.stats.labels["samples"].text().startswith("7 ")

    # similarity scoring on a worker
    with qtbot.waitSignal(window.state.busy_changed, timeout=LONG, check_params_cb=lambda b: b is False):
        click(qtbot, calib.stats.score_button)
    assert calib.stats.labels["minkpp"].text() != "–"

    # ---- 3. pruning: Wanda 50 %
    p = window.prune_panel
    p.method.setCurrentIndex(p.method.findData("wanda"))
    p.sparsity.setValue(50.0)
    p.structure.setCurrentIndex(p.structure.findData("unstructured"))
    assert st.prune_config is not None and st.prune_config.method == "wanda"

    # ---- 5 (settings first). evaluation text, so the run measures dense and pruned perplexity
    set_eval(window, eval_file, seqlen=32, windows=4)
    window.run_panel.eval_dense.setChecked(True)
    window.run_panel.eval_pruned.setChecked(True)

    # ---- 4. run
    worker = start_run(qtbot, window)
    pruned_events: list = []
    worker.yielded.connect(lambda ev: pruned_events.append(ev) if isinstance(ev, ModulePruned) else None)
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    assert st.run_status == RunStatus.DONE, window.run_panel.status.text.text()
    result = st.run.result
    names = window.run_panel.module_names
    heat = window.run_panel.heatmap.values()
    expected = np.array([[layer["modules"][n] for n in names] for layer in result.layers], dtype=np.float32)
    assert heat.shape == expected.shape == (3, 7)
    np.testing.assert_array_equal(heat, expected)  # the heatmap is exactly the engine's report
    assert np.allclose(heat, 0.5)
    assert st.run.ppl_dense is not None and st.run.ppl_pruned is not None
    assert math.isfinite(st.run.ppl_dense) and st.run.ppl_pruned > 0
    assert st.cached_dense() == st.run.ppl_dense
    assert "(corpus.txt, 4 windows of 32 tokens)" in window.run_panel.status.text.text()  # the limit: the text has more
    assert window.steps.kinds()["run"] == "ok"

    # click a heatmap cell: the mask view shows that module's mask and row histogram
    hm = window.run_panel.heatmap
    scene_pos = hm.cell_scene_pos(2, 5)
    view_pos = hm.glw.mapFromScene(scene_pos)
    QTest.mouseClick(hm.glw.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, view_pos)
    qtbot.waitUntil(lambda: window.run_panel.mask.current == (2, names[5]), timeout=5000)
    assert names[5].split(".")[-1] in window.run_panel.mask.title.text()
    img = window.run_panel.mask.mask_image.image
    assert img is not None and img.shape == pruned_events[-2].info["mask_image"].shape
    x, y = window.run_panel.mask.hist.getData()
    assert y is not None and y.sum() == len(pruned_events[-2].info["row_sparsity"])

    # editing the set after the run does not change what the run reports
    calib.preview.model.set_dropped([next(i for i, s in enumerate(cs.samples) if not s.dropped)], True)
    assert len(cs) == 6

    # ---- 5. export with progress; loads back with plain transformers
    window.show_step(4)
    e = window.eval_panel
    qtbot.waitUntil(lambda: e.export_button.isEnabled(), timeout=5000)
    assert e.ppl_table.rowCount() == 1 and e.ppl_table.item(0, 3).text() != "–"
    out = tmp_path / "exported"
    e.out_dir.setText(str(out))
    click(qtbot, e.export_button)
    with qtbot.waitSignal(e.job.worker.finished, timeout=LONG):
        pass
    assert st.export_path == out and (out / "prunestudio.json").exists()
    import json

    report = json.loads((out / "prunestudio.json").read_text())
    assert report["calibration"]["nsamples"] == 7 and report["method"] == "wanda"
    assert report["ppl_dense"] == pytest.approx(st.run.ppl_dense)
    assert report["eval"] == {"ppl_source": "corpus.txt", "seqlen": 32, "windows": 4, "max_windows": 4}
    assert e.open_button.isEnabled()
    opened = []
    monkeypatch.setattr("prunestudio.gui.panels.eval.open_folder", lambda p: opened.append(p))
    click(qtbot, e.open_button)
    assert opened == [out]
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(out)
    w = back.model.layers[1].mlp.up_proj.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5)
    with torch.no_grad():
        assert torch.isfinite(back(torch.tensor([[1, 5, 7]])).logits).all()

    # ---- 6. history: the run is stored and plotted
    window.show_step(5)
    h = window.history_panel
    qtbot.waitUntil(lambda: h.table.rowCount() == 1, timeout=5000)
    series = h.series(h.visible_rows())
    assert list(series.values())[0][0][1] == pytest.approx(st.run.ppl_pruned)

    # screenshots of every step after the run (looked at by hand, see the report)
    window.show_step(3)
    _grab_steps(window, qtbot, screenshots, "step")
    assert error_dialogs == []
