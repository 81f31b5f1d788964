"""Step 3 (gui/panels/prune.py): the N:M structure controls."""

from __future__ import annotations

import pytest
from _gui_fixtures import *  # noqa: F401,F403 - the GUI fixtures (see that module)


@pytest.mark.parametrize("structure", ["2:4", "custom"])
def test_nm_structure_controls(window, structure):
    p = window.prune_panel
    p.structure.setCurrentIndex(p.structure.findData(structure))
    if structure == "custom":
        p.n.setValue(3)
        p.m.setValue(8)
        assert p.nm_row.isVisibleTo(p)
    cfg = window.state.prune_config
    assert cfg is not None and cfg.structure == ("2:4" if structure == "2:4" else "3:8")
    assert not p.sparsity.isEnabled()
    p.n.setValue(8)  # N >= M is impossible
    if structure == "custom":
        assert window.state.prune_config is None and "0 < N < M" in window.state.prune_error
        assert window.steps.kinds()["pruning"] == "warn"


def test_dsnot_rule_control_reaches_the_setting(window):
    """The swap rule is offered with DSnoT's settings (enabled only when DSnoT is chosen), starts at
    the reference rule and reaches PruneConfig.dsnot_rule."""
    p = window.prune_panel
    p.method.setCurrentIndex(p.method.findData("wanda"))
    assert not p.dsnot_rule.isEnabled()
    p.method.setCurrentIndex(p.method.findData("dsnot"))
    assert p.dsnot_rule.isEnabled()
    assert window.state.prune_config.dsnot_rule == "reference"
    p.dsnot_rule.setCurrentIndex(p.dsnot_rule.findData("decrease"))
    assert window.state.prune_config.dsnot_rule == "decrease"
    p.dsnot_rule.setCurrentIndex(p.dsnot_rule.findData("reference"))
    assert window.state.prune_config.dsnot_rule == "reference"
