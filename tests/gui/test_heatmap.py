"""The heatmap view: columns grouped by role, absent cells for blocks of other kinds, fixed levels."""

from __future__ import annotations

import numpy as np
from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)
from prunestudio.gui.views.heatmap import HeatmapView, column_order

# a hybrid model's blocks: linear-attention blocks and full-attention blocks share the MLP
LINEAR = ("linear_attn.in_proj_qkvz", "linear_attn.out_proj", "mlp.gate_proj", "mlp.down_proj")
FULL = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")
UNION = ("linear_attn.in_proj_qkvz", "linear_attn.out_proj", "mlp.gate_proj", "mlp.down_proj",
         "self_attn.q_proj", "self_attn.o_proj")


def test_columns_are_grouped_by_role_keeping_forward_order():
    assert column_order(UNION) == ["linear_attn.in_proj_qkvz", "linear_attn.out_proj", "self_attn.q_proj",
                                   "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"]
    dense = ("self_attn.q_proj", "self_attn.k_proj", "mlp.up_proj", "mlp.down_proj")
    assert column_order(dense) == list(dense)


def test_a_module_a_block_lacks_is_absent_not_zero(configured_app, qtbot):
    view = HeatmapView()
    qtbot.addWidget(view)
    per_block = (LINEAR, LINEAR, LINEAR, FULL)
    view.reset(4, UNION, per_block)
    q = view.names.index("self_attn.q_proj")
    lin = view.names.index("linear_attn.out_proj")
    assert view.is_absent(0, q) and not view.is_absent(3, q)
    assert view.is_absent(3, lin) and not view.is_absent(0, lin)
    # a value for an absent cell is ignored; present cells take theirs
    view.set_value(0, "self_attn.q_proj", 0.5)
    view.set_value(3, "self_attn.q_proj", 0.5)
    data = view.values()
    assert np.isnan(data[0, q]) and data[3, q] == np.float32(0.5)
    # one hatched item per run of absent cells in a row: rows 0-2 have one run of two (self_attn),
    # row 3 one run of two (linear_attn)
    assert len(view._absent_items) == 4
    # hovering an absent cell says so
    view._moved(view.cell_scene_pos(0, q))
    assert "has no self_attn.q_proj" in view.hover.text()
    view._moved(view.cell_scene_pos(3, q))
    assert "50.0% zeros" in view.hover.text()


def test_a_model_whose_blocks_all_match_has_no_absent_cells(configured_app, qtbot):
    view = HeatmapView()
    qtbot.addWidget(view)
    view.reset(3, FULL)
    assert not any(view.is_absent(b, j) for b in range(3) for j in range(len(FULL)))
    assert view._absent_items == []
    # a new run replaces the hatching of the last one
    view.reset(2, UNION, (LINEAR, FULL))
    assert len(view._absent_items) == 2
    view.reset(2, FULL)
    assert view._absent_items == []


def test_a_hybrid_run_fills_present_cells_and_hatches_absent_ones(window, tokenizer):
    """A Qwen3-Next-style model (a linear-attention block, then a full-attention block) pruned by the
    engine, its events fed to the run panel as the worker would."""
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
    from _families import family_model
    from prunestudio.core.config import PruneConfig
    from prunestudio.core.events import run_to_completion
    from prunestudio.core.prune.pipeline import iter_prune

    model = family_model("qwen3_next")
    ids = torch.randint(3, 300, (4, 32), generator=torch.Generator().manual_seed(0))
    panel = window.run_panel
    run_to_completion(iter_prune(model, ids, PruneConfig(method="wanda", sparsity=0.5)), panel._event)
    view = panel.heatmap
    data = view.values()
    lin = [j for j, n in enumerate(view.names) if n.startswith("linear_attn.")]
    full = [j for j, n in enumerate(view.names) if n.startswith("self_attn.")]
    assert lin and full
    # block 0 is linear attention, block 1 full attention: each lacks the other's modules
    assert all(view.is_absent(0, j) for j in full) and all(view.is_absent(1, j) for j in lin)
    assert all(abs(data[0, j] - 0.5) < 0.01 for j in lin) and all(abs(data[1, j] - 0.5) < 0.01 for j in full)
    assert np.isnan(data[0, full]).all() and np.isnan(data[1, lin]).all()
    # the per-block progress bar counts each block's own modules
    first = set(panel._modules_of(0))
    assert all(view.names[j] in first for j in lin) and not any(view.names[j] in first for j in full)
    assert panel.block_bar.maximum() == len(panel._modules_of(1)) == panel.block_bar.value()
