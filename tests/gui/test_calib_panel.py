"""Step 2 (gui/panels/calib.py and its parts): saved sets, and the preview of the text being written."""

from __future__ import annotations

from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import LONG, click, generate_calibration, load_folder
from prunestudio.core.calib import selfgen
from prunestudio.core.calib.calibset import CalibrationSet
from prunestudio.gui import dialogs


def test_save_and_open_a_calibration_set(window, qtbot, monkeypatch, tiny_model_dir, tmp_path):
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    generate_calibration(qtbot, window, nsamples=4, seqlen=24)
    panel = window.calib_panel
    panel.preview.model.set_dropped([0], True)  # dropped by hand, kept in the file
    path = tmp_path / "set.jsonl"
    monkeypatch.setattr(dialogs, "get_save_file", lambda *a, **k: str(path))
    click(qtbot, panel.save_button)
    saved = CalibrationSet.load(path)
    assert saved.samples[0].dropped and saved.samples[0].drop_reason == "dropped by hand"

    window.state.set_calib(None)
    assert panel.preview.model.rowCount() == 0
    monkeypatch.setattr(dialogs, "get_open_file", lambda *a, **k: str(path))
    click(qtbot, panel.open_button)
    with qtbot.waitSignal(panel.job.worker.finished, timeout=LONG):
        pass
    cs = window.state.calib
    assert cs is not None and cs.sha256() == saved.sha256() and cs.samples[0].dropped
    assert panel.form.kind.currentData() == "saved" and window.state.calib_config.source == str(path)
    assert panel.preview.model.rowCount() == len(saved.samples)


def test_calibration_preview_follows_the_text_being_written(window, qtbot, monkeypatch, tiny_model_dir):
    """While a batch is decoded the preview shows its first sample growing; a sample the user picks
    stays in the preview; at the end the first sample is shown if nothing was picked."""
    monkeypatch.setattr(selfgen.generate, "_STEP_PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(selfgen.generate, "fitting_batch", lambda model, requested, *a: min(requested, 4))
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    window.show_step(1)
    panel = window.calib_panel
    preview = panel.preview
    panel.form.kind.setCurrentIndex(panel.form.kind.findData("selfgen"))
    panel.form.nsamples.setValue(6)
    panel.form.seqlen.setValue(16)
    shown: list[tuple[object, str]] = []  # (event, preview text once the panel has handled it)

    def after_panel(ev) -> None:  # connected after the panel's own slot, so it sees the result
        if isinstance(ev, (selfgen.SampleInProgress, selfgen.SampleGenerated)):
            shown.append((ev, preview.text.toPlainText()))
        if isinstance(ev, selfgen.SampleGenerated) and ev.index == 1:
            preview.table.selectRow(1)  # the user picks a finished sample while the next batch runs

    click(qtbot, panel.go)
    panel.job.worker.yielded.connect(after_panel)
    with qtbot.waitSignal(panel.job.worker.finished, timeout=LONG):
        pass
    picked = next(i for i, (ev, _) in enumerate(shown) if isinstance(ev, selfgen.SampleGenerated) and ev.index == 1)
    live_before = [(ev, text) for ev, text in shown[:picked] if isinstance(ev, selfgen.SampleInProgress)]
    assert live_before and all(ev.index == 0 for ev, _ in live_before)
    for ev, text in live_before:
        assert text.startswith(f"Writing sample 0 · {ev.num_tokens} of 16 tokens") and text.endswith(ev.text)
    later = [text for ev, text in shown[picked + 1:] if isinstance(ev, selfgen.SampleInProgress)]
    assert later, "a second batch was decoded"
    sample_1 = window.state.calib.samples[1].text
    assert all(text.endswith(sample_1) and not text.startswith("Writing") for text in later)
    assert preview.table.currentIndex().row() == 1 and preview.text.toPlainText().endswith(sample_1)

    # another run, nothing picked: the first sample is shown at the end
    click(qtbot, panel.go)
    with qtbot.waitSignal(panel.job.worker.finished, timeout=LONG):
        pass
    assert preview.table.currentIndex().row() == 0
    assert preview.text.toPlainText().endswith(window.state.calib.samples[0].text)


def test_paper_protocol_is_chosen_in_the_form_and_previewed_live(window, qtbot, monkeypatch, tiny_model_dir,
                                                                 corpus_file):
    """The protocol control shows for prefix sources only; the paper protocol's samples (of their
    own lengths) fill the preview while they are written, and the set's windows replace them."""
    from prunestudio.core.calib.selfgen import paper

    monkeypatch.setattr(paper, "_STEP_PROGRESS_SECONDS", 0.0)
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    window.show_step(1)
    panel = window.calib_panel
    form = panel.form
    form.kind.setCurrentIndex(form.kind.findData("selfgen"))
    assert form.protocol.isHidden() and form.config().protocol == "windows"
    form.kind.setCurrentIndex(form.kind.findData("selfgen-file"))
    form.path.setText(str(corpus_file))
    assert not form.protocol.isHidden()
    form.protocol.setCurrentIndex(form.protocol.findData("paper"))
    form.nsamples.setValue(3)
    form.seqlen.setValue(16)
    assert window.state.calib_config.protocol == "paper"
    assert window.state.recipe().calibration.protocol == "paper"
    events: list = []
    rows_seen: list[int] = []
    click(qtbot, panel.go)
    panel.job.worker.yielded.connect(events.append)
    panel.job.worker.yielded.connect(lambda ev: rows_seen.append(panel.preview.model.rowCount()))
    with qtbot.waitSignal(panel.job.worker.finished, timeout=LONG):
        pass
    cs = window.state.calib
    assert cs is not None and cs.settings["protocol"] == "paper" and len(cs) == 3
    written = [e for e in events if isinstance(e, selfgen.SampleGenerated)]
    assert [e.index for e in written] == list(range(cs.settings["samples_used"]))
    assert [e.num_tokens for e in written] == [d["tokens"] for d in cs.settings["documents"]]
    assert any(isinstance(e, selfgen.SampleInProgress) for e in events)
    assert max(rows_seen) == len(written)  # each sample appeared in the preview as it was written
    assert panel.preview.model.rowCount() == 3  # then the windows of the set
