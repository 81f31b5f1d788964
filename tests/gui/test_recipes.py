"""gui.recipes: recipes round-trip through the UI (set controls, save, change them, load, compare);
bad files and invalid settings give one readable error."""

from __future__ import annotations

import json

import pytest
from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import click
from prunestudio.core.config import Recipe
from prunestudio.gui import dialogs


def _flat(recipe: Recipe) -> dict:
    """The recipe's JSON as one level of ``section.field`` keys (lists for tuples)."""
    out = {}
    for key, value in json.loads(json.dumps(recipe.to_dict())).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


# recipe fields no control sets, on purpose: per-block sparsities come from OWL, the offload
# folder from the CLI, partial runs are asked per run, expert_min_tokens is a CLI/recipe setting
NOT_IN_THE_GUI = {"format", "version", "prune.block_sparsity", "prune.offload_dir", "prune.allow_partial",
                  "prune.expert_min_tokens"}


def _control_rows(window, other_file):
    """(what, set the control to a non-default value, the recipe fields that must change and to what)."""
    st = window.state
    p, c, m, e = window.prune_panel, window.calib_panel.form, window.model_panel, window.eval_panel

    def model_step(change):
        # step 1's choices reach the recipe when the model is loaded (or a recipe is applied);
        # this is the hand-over a load does, without loading
        def act():
            change()
            st.set_load_args(m.load_args())
        return act

    def pick(combo, data):
        return lambda: combo.setCurrentIndex(combo.findData(data))

    def custom(n, mm):
        def act():
            p.n.setValue(n)
            p.m.setValue(mm)
            p.structure.setCurrentIndex(p.structure.findData("custom"))
        return act

    return [
        ("hub model", model_step(lambda: (m.hub.setText("someone/some-model"), m.radio["hub"].setChecked(True))),
         {"model": "someone/some-model"}),
        ("device", model_step(lambda: m.device.setCurrentText("cpu")), {"device": "cpu"}),
        ("dtype", model_step(lambda: m.dtype.setCurrentText("bf16")), {"dtype": "bf16"}),
        ("trust remote code", model_step(lambda: m.trust.setChecked(True)), {"trust_remote_code": True}),
        ("calibration preset", lambda: (pick(c.kind, "preset")(), pick(c.preset, "wikitext2")()),
         {"calibration.source": "wikitext2"}),
        ("self-generation from a preset", lambda: (pick(c.kind, "selfgen-preset")(), pick(c.preset, "c4")()),
         {"calibration.source": "selfgen:c4"}),
        ("the paper's self-generation protocol",
         lambda: (pick(c.kind, "selfgen-preset")(), pick(c.preset, "c4")(), pick(c.protocol, "paper")()),
         {"calibration.source": "selfgen:c4", "calibration.protocol": "paper"}),
        ("calibration file", lambda: (pick(c.kind, "file")(), c.path.setText(str(other_file))),
         {"calibration.source": str(other_file)}),
        ("samples", lambda: c.nsamples.setValue(16), {"calibration.nsamples": 16}),
        ("calibration length", lambda: c.seqlen.setValue(64), {"calibration.seqlen": 64}),
        ("seed", lambda: c.seed.setValue(3), {"calibration.seed": 3}),
        ("window mode", lambda: c.mode.setCurrentText("document"), {"calibration.mode": "document"}),
        ("prefix tokens", lambda: c.prefix_tokens.setValue(5), {"calibration.prefix_tokens": 5}),
        ("temperature", lambda: c.temperature.setValue(0.8), {"calibration.temperature": 0.8}),
        ("top-p", lambda: c.top_p.setValue(0.9), {"calibration.top_p": 0.9}),
        ("top-k", lambda: c.top_k.setValue(20), {"calibration.top_k": 20}),
        ("repetition penalty", lambda: c.rep.setValue(1.1), {"calibration.repetition_penalty": 1.1}),
        ("dropped samples", lambda: c.drop.setValue(10), {"calibration.drop_top": 0.1}),
        ("method", pick(p.method, "sparsegpt"), {"prune.method": "sparsegpt"}),
        ("sparsity", lambda: p.sparsity.setValue(60.0), {"prune.sparsity": 0.6}),
        ("2:4", pick(p.structure, "2:4"), {"prune.structure": "2:4"}),
        ("custom N:M", custom(3, 8), {"prune.structure": "3:8"}),
        ("OWL", lambda: p.owl.setChecked(True), {"prune.owl": True}),
        ("OWL M", lambda: p.owl_m.setValue(7.0), {"prune.owl_m": 7.0}),
        ("OWL lambda", lambda: p.owl_lambda.setValue(0.05), {"prune.owl_lambda": 0.05}),
        ("DSnoT initial mask", lambda: p.dsnot_init.setCurrentText("magnitude"), {"prune.dsnot_init": "magnitude"}),
        ("DSnoT cycles", lambda: p.dsnot_cycles.setValue(20), {"prune.dsnot_max_cycles": 20}),
        ("DSnoT threshold", lambda: p.dsnot_threshold.setValue(0.2), {"prune.dsnot_threshold": 0.2}),
        ("DSnoT unrefined", pick(p.dsnot_skip, "attention"), {"prune.dsnot_skip": "attention"}),
        ("DSnoT rule", pick(p.dsnot_rule, "decrease"), {"prune.dsnot_rule": "decrease"}),
        ("SparseGPT block size", lambda: p.blocksize.setValue(64), {"prune.sparsegpt_blocksize": 64}),
        ("SparseGPT damping", lambda: p.damp.setValue(0.02), {"prune.sparsegpt_damp": 0.02}),
        ("modules left dense", lambda: p.skip.setText("down_proj, o_proj"),
         {"prune.skip_modules": ["down_proj", "o_proj"]}),
        ("batch", lambda: p.batch.setValue(4), {"prune.batch_size": 4}),
        ("offload to disk", pick(p.offload, "disk"), {"prune.offload_to": "disk"}),
        ("no offload", pick(p.offload, "none"), {"prune.offload": False}),
        ("one pass", pick(p.one_pass, True), {"prune.one_pass": True}),
        ("two passes", pick(p.one_pass, False), {"prune.one_pass": False}),
        ("evaluation text", lambda: e.source.setText(str(other_file)), {"eval_ppl": [str(other_file)]}),
        ("evaluation length", lambda: e.seqlen.setValue(128), {"eval_seqlen": 128}),
        ("evaluation windows", lambda: e.windows.setValue(5), {"eval_max_windows": 5}),
        ("all evaluation windows", lambda: e.windows.setValue(0), {"eval_max_windows": None}),
    ]


def test_each_control_changes_exactly_its_recipe_field(window, tmp_path, eval_file, error_dialogs):
    st = window.state
    window.eval_panel.source.setText(str(eval_file))  # the evaluation settings count with a text
    st.set_load_args(window.model_panel.load_args())
    base_recipe = st.recipe()
    base = _flat(base_recipe)
    other_file = tmp_path / "other.txt"
    other_file.write_text("Some other text. " * 50, encoding="utf-8")
    rows = _control_rows(window, other_file)
    reached = set()
    for what, act, expected in rows:
        assert all(base[k] != v for k, v in expected.items()), f"{what}: the test's value is the default"
        act()
        assert st.prune_config is not None, (what, st.prune_error)
        got = _flat(st.recipe())
        changed = {k: got[k] for k in got if got[k] != base.get(k)}
        assert set(changed) == set(expected), (what, changed)
        for k, v in expected.items():
            assert changed[k] == (pytest.approx(v) if isinstance(v, float) else v), (what, changed)
        reached |= set(expected)
        st.apply_recipe(base_recipe)  # loading the recipe sets the control back
        assert _flat(st.recipe()) == base, f"{what}: applying the recipe did not set the control back"
    # every field of the recipe is reached by some control, or is listed as not in the GUI
    assert set(base) - NOT_IN_THE_GUI == reached, set(base) - NOT_IN_THE_GUI ^ reached
    assert error_dialogs == []


def test_loading_a_recipe_sets_each_control(window, qtbot, monkeypatch, tmp_path, eval_file, error_dialogs):
    """A recipe written here with every field away from its default, loaded through the button:
    each control shows its value (read from the control, not through recipe())."""
    from prunestudio.core.config import CalibConfig, PruneConfig

    st = window.state
    p, c, m, e = window.prune_panel, window.calib_panel.form, window.model_panel, window.eval_panel
    saved = Recipe(
        model="someone/some-model", device="cpu", dtype="bf16", trust_remote_code=True,
        prune=PruneConfig(method="sparsegpt", sparsity=0.6, structure="3:8", owl=True, owl_m=7.0,
                          owl_lambda=0.05, dsnot_init="magnitude", dsnot_max_cycles=20, dsnot_threshold=0.2,
                          dsnot_skip="attention", dsnot_rule="decrease", sparsegpt_blocksize=64,
                          sparsegpt_damp=0.02, skip_modules=("down_proj", "o_proj"), batch_size=4,
                          one_pass=True).with_offload_mode("disk"),
        calibration=CalibConfig(source="selfgen:wikitext2", nsamples=16, seqlen=64, seed=3, mode="document",
                                prefix_tokens=5, temperature=0.8, top_p=0.9, top_k=20, repetition_penalty=1.1,
                                drop_top=0.1, protocol="paper"),
        eval_ppl=(str(eval_file),), eval_seqlen=128, eval_max_windows=5)
    path = tmp_path / "recipe.json"
    saved.save(path)
    monkeypatch.setattr(dialogs, "get_open_file", lambda *a, **k: str(path))
    click(qtbot, p.load_button)

    assert m.kind() == "hub" and m.hub.text() == "someone/some-model"
    assert m.device.currentText() == "cpu" and m.dtype.currentText() == "bf16" and m.trust.isChecked()
    assert c.kind.currentData() == "selfgen-preset" and c.preset.currentData() == "wikitext2"
    assert c.protocol.currentData() == "paper"
    assert (c.nsamples.value(), c.seqlen.value(), c.seed.value(), c.mode.currentText()) == (16, 64, 3, "document")
    assert (c.prefix_tokens.value(), c.top_k.value()) == (5, 20)
    assert (c.temperature.value(), c.top_p.value(), c.rep.value(), c.drop.value()) == pytest.approx((0.8, 0.9, 1.1, 10))
    assert p.method.currentData() == "sparsegpt" and p.sparsity.value() == pytest.approx(60.0)
    assert p.structure.currentData() == "custom" and (p.n.value(), p.m.value()) == (3, 8)
    assert p.owl.isChecked() and (p.owl_m.value(), p.owl_lambda.value()) == pytest.approx((7.0, 0.05))
    assert p.dsnot_init.currentText() == "magnitude" and p.dsnot_cycles.value() == 20
    assert p.dsnot_threshold.value() == pytest.approx(0.2)
    assert p.dsnot_skip.currentData() == "attention" and p.dsnot_rule.currentData() == "decrease"
    assert p.blocksize.value() == 64 and p.damp.value() == pytest.approx(0.02)
    assert p.skip.text() == "down_proj, o_proj" and p.batch.value() == 4
    assert p.offload.currentData() == "disk" and p.one_pass.currentData() is True
    assert e.source.text() == str(eval_file) and e.seqlen.value() == 128 and e.windows.value() == 5
    # and the controls give back the same recipe, and saving writes the same JSON
    assert st.recipe() == saved
    out = tmp_path / "again.json"
    monkeypatch.setattr(dialogs, "get_save_file", lambda *a, **k: str(out))
    click(qtbot, p.save_button)
    assert json.loads(out.read_text()) == json.loads(path.read_text())
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
