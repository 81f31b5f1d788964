"""A mixture-of-experts model whose fused experts cannot be pruned (Llama 4 keeps them in a layout of
its own, not transformers' experts protocol that Mixtral, Qwen3-MoE and the others share and Prune
Studio prunes expert by expert): the run panel asks before a
partial run (no answer, no run), and a run the user accepts is marked partial in the run panel,
the evaluate / export step and the history."""

from __future__ import annotations

import pytest
import torch
from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from _gui_helpers import LONG, load_folder, start_run
from prunestudio.gui.state import RunStatus


@pytest.fixture
def moe_dir(tmp_path, tokenizer):
    """A tiny random Llama 4 text model (two blocks, four fused experts each) and its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama4_text", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=32,
                               intermediate_size_mlp=128, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=1,
                               max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    d = tmp_path / "models" / "tiny-llama4"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def _magnitude_without_eval(window):
    p = window.prune_panel
    p.method.setCurrentIndex(p.method.findData("magnitude"))  # no calibration set needed
    p.sparsity.setValue(50.0)
    window.run_panel.eval_dense.setChecked(False)
    window.run_panel.eval_pruned.setChecked(False)


def test_partial_run_is_confirmed_and_marked(window, qtbot, monkeypatch, moe_dir, confirm_answers, error_dialogs):
    answers, asked = confirm_answers
    load_folder(qtbot, window, monkeypatch, moe_dir)
    _magnitude_without_eval(window)
    run = window.run_panel

    answers.append(False)  # the user cancels: nothing starts
    assert run.start() is False
    assert len(asked) == 1 and "Llama4ForCausalLM: the experts (feed_forward.experts.gate_up_proj, feed_forward.experts.down_proj" in asked[0]
    assert run.job.worker is None and not window.state.busy
    assert window.state.run_status == RunStatus.NONE and window.state.run is None
    assert "Not started" in run.status.text.text()

    worker = start_run(qtbot, window)  # the user accepts (the stub answers yes)
    with qtbot.waitSignal(worker.finished, timeout=LONG):
        pass
    assert len(asked) == 2
    st = window.state
    assert st.run_status == RunStatus.DONE
    cov = st.run.report["coverage"]
    assert cov["partial"] is True and st.run.recipe.prune.allow_partial is True
    assert run.status.kind == "warn" and "PARTIAL" in run.status.text.text()
    assert f"{cov['pruned_share']:.0%} of the block weights" in run.status.text.text()

    e = window.eval_panel
    window.show_step(4)
    assert e.partial_note.isVisible() and "Partial pruning" in e.partial_note.text()
    assert e.exporter.suggested_folder().endswith("-partial")

    window.show_step(5)
    h = window.history_panel
    qtbot.waitUntil(lambda: h.table.rowCount() == 1, timeout=5000)
    cols = {h.table.horizontalHeaderItem(c).text(): c for c in range(h.table.columnCount())}
    assert h.table.item(0, cols["Achieved"]).text().endswith("(partial)")
    assert h.table.item(0, cols["Coverage"]).text() == f"{cov['pruned_share']:.0%} partial"
    assert st.history().runs()[0].partial is True
    assert error_dialogs == []


def test_a_dense_model_is_not_asked_about(window, qtbot, monkeypatch, tiny_model_dir, confirm_answers):
    _, asked = confirm_answers
    load_folder(qtbot, window, monkeypatch, tiny_model_dir)
    _magnitude_without_eval(window)
    recipe = window.state.recipe(model_in_memory=True)
    assert window.run_panel._partial_recipe(recipe) is recipe
    assert asked == []
