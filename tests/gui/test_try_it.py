"""Step 5's "use the result" parts: the try-it pane (gui/views/try_it.py, gui/panels/eval_try.py)
continues a prompt with the dense and the pruned model side by side, repeatably and cancellably;
its texts go into the exported card; "Open in Ollama" writes the Modelfile and shows the command."""

from __future__ import annotations

import json

from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import LONG, click, load_folder, start_run


def _prune(qtbot, window, monkeypatch, folder):
    load_folder(qtbot, window, monkeypatch, folder)
    p = window.prune_panel
    p.method.setCurrentIndex(p.method.findData("magnitude"))  # no calibration set needed
    window.run_panel.eval_dense.setChecked(False)
    window.run_panel.eval_pruned.setChecked(False)
    worker = start_run(qtbot, window)
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    qtbot.waitUntil(lambda: not window.state.busy, timeout=LONG)
    window.show_step(4)


def _generate(qtbot, t):
    click(qtbot, t.pane.generate_button)
    worker = t.job.worker
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    qtbot.waitUntil(lambda: not t.state.busy, timeout=LONG)


def test_dense_and_pruned_texts_side_by_side_repeatable_and_in_the_card(
        window, qtbot, monkeypatch, tiny_model_dir, tmp_path, error_dialogs):
    _prune(qtbot, window, monkeypatch, tiny_model_dir)
    t = window.eval_panel.try_it
    pane = t.pane
    assert pane.generate_button.isEnabled(), pane.availability.text()
    assert "second copy" in pane.availability.text()
    pane.prompt.setPlainText("The quick brown fox")
    pane.new_tokens.setValue(12)
    pane.temperature.setValue(1.0)
    pane.seed.setValue(5)
    logged: list[str] = []
    window.state.logged.connect(lambda text, _level: logged.append(text))
    _generate(qtbot, t)
    assert error_dialogs == []
    first = (pane.text_of("dense"), pane.text_of("pruned"))
    assert all(x.startswith("The quick brown fox") and len(x) > len("The quick brown fox") for x in first)
    assert any("second copy" in line for line in logged)

    # the same seed: the same two texts; the dense one is known now, so no second copy is loaded
    logged.clear()
    _generate(qtbot, t)
    assert (pane.text_of("dense"), pane.text_of("pruned")) == first
    assert not any("second copy" in line for line in logged)
    assert "known from before" in pane.titles["dense"].text()

    # the export's card holds them, labelled
    e = window.eval_panel
    out = tmp_path / "exported"
    e.out_dir.setText(str(out))
    click(qtbot, e.export_button)
    with qtbot.waitSignal(e.job.worker.finished, timeout=LONG):
        pass
    report = json.loads((out / "prunestudio.json").read_text())
    assert report["samples"]["pairs"] == [{"prompt": "The quick brown fox",
                                           "dense": first[0][len("The quick brown fox"):],
                                           "pruned": first[1][len("The quick brown fox"):]}]
    card = (out / "README.md").read_text()
    assert "## Samples: dense and pruned" in card and first[1] in card

    # Open in Ollama: the Modelfile in the folder, the command to copy
    qtbot.waitUntil(lambda: e.ollama_button.isEnabled(), timeout=5000)
    click(qtbot, e.ollama_button)
    dialog = e._ollama_dialog
    assert (out / "Modelfile").read_text() == dialog.text.toPlainText()
    assert dialog.command.text().startswith("ollama create exported -f ")
    click(qtbot, dialog.copy_button)
    from PySide6.QtGui import QGuiApplication

    assert QGuiApplication.clipboard().text() == dialog.command.text()
    dialog.close()


def test_cancel_stops_the_generation_and_keeps_nothing_for_the_card(
        window, qtbot, monkeypatch, tiny_model_dir, error_dialogs):
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    window.show_step(4)
    t = window.eval_panel.try_it
    pane = t.pane
    assert "No pruned model yet" in pane.availability.text()
    pane.new_tokens.setValue(400)
    click(qtbot, pane.generate_button)
    worker = t.job.worker
    assert worker is not None and pane.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: "writing" in pane.titles["dense"].text(), timeout=LONG)
    with qtbot.waitSignal(worker.cancelled, timeout=LONG):
        click(qtbot, pane.cancel_button)
    qtbot.waitUntil(lambda: not window.state.busy, timeout=LONG)
    assert error_dialogs == []
    assert pane.card_samples() is None
    assert pane.generate_button.isEnabled() and not pane.cancel_button.isEnabled()
