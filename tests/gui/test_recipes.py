"""gui.recipes: recipes round-trip through the UI (set controls, save, change them, load, compare);
bad files and invalid settings give one readable error."""

from __future__ import annotations

import json

from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import click
from prunestudio.core.config import Recipe
from prunestudio.gui import dialogs


def test_recipe_round_trip_through_the_ui(window, qtbot, monkeypatch, tmp_path, eval_file, error_dialogs):
    st = window.state
    p, c, m, e = window.prune_panel, window.calib_panel.form, window.model_panel, window.eval_panel

    # set controls in every step
    m.hub.setText("someone/some-model")
    m.radio["hub"].setChecked(True)
    m.dtype.setCurrentText("bf16")
    st.set_load_args(m.load_args())
    c.kind.setCurrentIndex(c.kind.findData("selfgen-preset"))
    c.preset.setCurrentIndex(c.preset.findData("wikitext2"))
    c.nsamples.setValue(16)
    c.seqlen.setValue(64)
    c.seed.setValue(3)
    c.temperature.setValue(0.8)
    c.drop.setValue(10)
    p.method.setCurrentIndex(p.method.findData("sparsegpt"))
    p.sparsity.setValue(60.0)
    p.structure.setCurrentIndex(p.structure.findData("unstructured"))
    p.owl.setChecked(True)
    p.owl_m.setValue(7.0)
    p.owl_lambda.setValue(0.05)
    p.blocksize.setValue(64)
    p.damp.setValue(0.02)
    p.skip.setText("down_proj, o_proj")
    e.source.setText(str(eval_file))
    e.seqlen.setValue(128)
    assert st.prune_config is not None, st.prune_error
    wanted = st.recipe()

    path = tmp_path / "recipe.json"
    monkeypatch.setattr(dialogs, "get_save_file", lambda *a, **k: str(path))
    click(qtbot, p.save_button)
    assert path.exists()
    on_disk = json.loads(path.read_text())
    assert on_disk["format"] == "prunestudio-recipe"
    assert Recipe.load(path) == wanted  # the same JSON as core.config.Recipe

    # change everything
    p.method.setCurrentIndex(p.method.findData("magnitude"))
    p.sparsity.setValue(30.0)
    p.owl.setChecked(False)
    p.structure.setCurrentIndex(p.structure.findData("custom"))
    p.n.setValue(3)
    p.m.setValue(8)
    p.skip.clear()
    c.kind.setCurrentIndex(c.kind.findData("selfgen"))
    c.nsamples.setValue(4)
    c.seed.setValue(99)
    m.radio["demo"].setChecked(True)
    e.seqlen.setValue(256)
    st.set_load_args(m.load_args())
    assert st.recipe() != wanted

    # load it back: every control returns to the saved value
    monkeypatch.setattr(dialogs, "get_open_file", lambda *a, **k: str(path))
    click(qtbot, p.load_button)
    got = st.recipe()
    assert got == wanted
    assert json.loads(json.dumps(got.to_dict())) == on_disk
    assert p.method.currentData() == "sparsegpt" and p.owl.isChecked() and p.skip.text() == "down_proj, o_proj"
    assert c.kind.currentData() == "selfgen-preset" and c.nsamples.value() == 16
    assert m.kind() == "hub" and m.hub.text() == "someone/some-model" and m.dtype.currentText() == "bf16"
    assert e.seqlen.value() == 128
    assert error_dialogs == []


def test_bad_recipe_reports_one_error(window, qtbot, monkeypatch, tmp_path, error_dialogs):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"prune": {"method": "wanda", "sparsity": 1.5}}))
    monkeypatch.setattr(dialogs, "get_open_file", lambda *a, **k: str(bad))
    before = window.state.recipe()
    click(qtbot, window.prune_panel.load_button)
    qtbot.waitUntil(lambda: len(error_dialogs) == 1, timeout=5000)
    assert "Sparsity must be between 0 and 1" in error_dialogs[0].text
    assert window.state.recipe() == before


def test_saving_invalid_settings_writes_nothing_and_says_why(window, qtbot, monkeypatch, tmp_path, error_dialogs):
    from prunestudio.gui import recipes

    p = window.prune_panel
    p.structure.setCurrentIndex(p.structure.findData("custom"))
    p.n.setValue(8)  # N >= M: no valid PruneConfig
    assert window.state.prune_config is None
    path = tmp_path / "recipe.json"
    monkeypatch.setattr(dialogs, "get_save_file", lambda *a, **k: str(path.with_suffix("")))
    assert recipes.save_recipe_dialog(window, window.state) is None
    qtbot.waitUntil(lambda: len(error_dialogs) == 1, timeout=5000)
    assert error_dialogs[0].text.startswith("The pruning settings are invalid") and "0 < N < M" in error_dialogs[0].text
    assert not path.exists()
