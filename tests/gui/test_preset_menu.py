"""File > Settings preset: every step's sizes follow the preset (core/config.py SETTINGS_PRESETS)."""

from __future__ import annotations

from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)


def test_paper_preset_sets_every_step_and_cpu_goes_back(window):
    calib = window.calib_panel.form
    ev = window.eval_panel
    window.preset_actions["paper"].trigger()
    cfg = window.state.calib_config
    assert (cfg.nsamples, cfg.seqlen, cfg.mode) == (128, 2048, "document")
    assert (calib.nsamples.value(), calib.seqlen.value(), calib.mode.currentText()) == (128, 2048, "document")
    assert ev.seqlen.value() == 2048 and ev.windows.value() == 0  # every window
    assert ev.limit.value() == 0 and ev.full_tasks.isChecked()  # every question of the whole sets
    r = window.state.recipe()
    assert (r.calibration.nsamples, r.calibration.seqlen, r.eval_seqlen) == (128, 2048, 2048)

    window.preset_actions["cpu"].trigger()
    cfg = window.state.calib_config
    assert (cfg.nsamples, cfg.seqlen, cfg.mode) == (64, 512, "random")
    assert ev.seqlen.value() == 512 and ev.limit.value() == 100 and not ev.full_tasks.isChecked()
