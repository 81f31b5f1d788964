"""The GUI's jobs (gui/tasks.py) run the engine's one run path: the CLI's checks with the CLI's
messages, the offload mode of step 3 (disk included), and the CLI's weights."""

from __future__ import annotations

from pathlib import Path

import torch
from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import LONG, load_folder, start_run
from prunestudio.core.config import CalibConfig, PruneConfig, Recipe
from prunestudio.core.errors import ConfigError
from prunestudio.core.run.load import held_on_disk
from prunestudio.gui import tasks
from prunestudio.gui.worker import Worker


def _cli(capsys, *argv: str) -> tuple[int, str]:
    from prunestudio.core.cli.commands import main

    capsys.readouterr()
    rc = main(["-q", *argv])
    return rc, capsys.readouterr().err.strip()


def _run(qtbot, fn, *args):
    """``fn(*args)`` on the GUI's worker; (returned value, error info)."""
    w = Worker(fn, *args, name="test job")
    got: dict = {}
    w.returned.connect(lambda v: got.setdefault("value", v))
    w.errored.connect(lambda info: got.setdefault("error", info))
    with qtbot.waitSignal(w.finished, timeout=LONG):
        w.start()
    return got.get("value"), got.get("error")


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_an_impossible_structure_is_refused_with_the_clis_message(window, qtbot, monkeypatch, tiny_model_dir,
                                                                  error_dialogs, capsys):
    st = window.state
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    before = {k: v.clone() for k, v in st.loaded.model.state_dict().items()}
    p = window.prune_panel
    p.method.setCurrentIndex(p.method.findData("magnitude"))
    p.structure.setCurrentIndex(p.structure.findData("custom"))
    p.n.setValue(2)
    p.m.setValue(6)  # the tiny Llama's inputs (64, 128) are no multiple of 6
    assert st.prune_config is not None and st.prune_config.structure == "2:6"
    worker = start_run(qtbot, window)
    with qtbot.waitSignal(worker.errored, timeout=LONG) as blocker:
        pass
    err = blocker.args[0].exception
    assert isinstance(err, ConfigError)
    rc, cli = _cli(capsys, "prune", "--model", str(tiny_model_dir), "--device", "cpu", "--method", "magnitude",
                   "--structure", "2:6")
    assert rc == 1 and cli == f"error: {err}"
    assert "N:M structure 2:6 needs the input size of every pruned module to be a multiple of 6" in cli
    qtbot.waitUntil(lambda: len(error_dialogs) == 1, timeout=5000)
    assert f"{error_dialogs[0].text} {error_dialogs[0].hint}" == str(err)  # the dialog says the same
    # refused before pruning anything: the model in memory is still the dense one
    assert st.model_status == "dense" and st.loaded is not None
    assert all(torch.equal(before[k], v) for k, v in st.loaded.model.state_dict().items())


def test_a_wrong_per_block_list_is_refused_with_the_clis_message(configured_app, qtbot, tiny_model_dir, tmp_path,
                                                                 error_dialogs, capsys):
    recipe = Recipe(model=str(tiny_model_dir), device="cpu", dtype="fp32",
                    prune=PruneConfig(method="magnitude", block_sparsity=(0.5, 0.5)))
    _, info = _run(qtbot, tasks.run, tasks.RunRequest(recipe, None, None))
    assert info is not None and isinstance(info.exception, ConfigError)
    recipe.save(tmp_path / "recipe.json")
    rc, cli = _cli(capsys, "prune", "--recipe", str(tmp_path / "recipe.json"))
    assert rc == 1 and cli == f"error: {info.exception}"
    assert cli == "error: 2 per-block sparsities given, tiny-llama has 3 blocks."


def test_disk_offload_from_the_gui_gives_the_clis_weights(window, qtbot, monkeypatch, tiny_model_dir, corpus_file,
                                                          tmp_path, error_dialogs, capsys):
    st = window.state
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    assert not held_on_disk(st.loaded)
    cal = CalibConfig(source=str(corpus_file), nsamples=4, seqlen=32, seed=0)
    cs, info = _run(qtbot, tasks.calibrate, st.dense_model(), st.model_args, cal)
    assert info is None and len(cs) == 4
    st.set_calib_config(cal)
    st.set_calib(cs)

    p = window.prune_panel
    p.method.setCurrentIndex(p.method.findData("wanda"))
    p.structure.setCurrentIndex(p.structure.findData("unstructured"))
    p.sparsity.setValue(50.0)
    in_memory = st.memory_estimate()[0]
    p.offload.setCurrentIndex(p.offload.findData("disk"))  # step 3's setting
    assert st.prune_config.offload_mode == "disk"
    on_disk = st.memory_estimate()[0]
    assert on_disk["weights"] < in_memory["weights"]  # the estimate knows the blocks stay in files

    worker = start_run(qtbot, window)
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    assert st.run is not None and st.exportable(), window.run_panel.status.text.text()
    assert held_on_disk(st.loaded), "the run must reload the model with its blocks on disk"
    assert any("with its blocks on disk" in line for line in window.run_panel.log.lines())
    gui_out = tmp_path / "gui-export"
    exported, info = _run(qtbot, tasks.export, st.run, str(gui_out), False)
    assert info is None and exported.path == gui_out

    cli_out = tmp_path / "cli-export"
    rc, _ = _cli(capsys, "prune", "--model", str(tiny_model_dir), "--device", "cpu", "--method", "wanda",
                 "--sparsity", "0.5", "--calibration", str(corpus_file), "--nsamples", "4", "--seqlen", "32",
                 "--seed", "0", "--offload", "disk", "--out", str(cli_out))
    assert rc == 0
    gui_w, cli_w = _tensors(gui_out), _tensors(cli_out)
    assert gui_w.keys() == cli_w.keys() and gui_w
    for name, w in cli_w.items():
        assert torch.equal(gui_w[name], w), name  # bit-identical
    up = gui_w["model.layers.1.mlp.up_proj.weight"]
    assert float((up == 0).float().mean()) == 0.5
    assert error_dialogs == []
