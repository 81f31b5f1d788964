"""The run history database."""

from __future__ import annotations

from prunestudio.core.run.history import History


def test_add_update_and_list(tmp_path):
    h = History(tmp_path / "h.sqlite3")
    report = {"method": "wanda", "structure": "2:4", "sparsity_target": 0.5, "global_sparsity": 0.5,
              "ppl_dense": 10.0, "ppl_pruned": None, "model": {"name": "m"},
              "calibration": {"source": "selfgen", "nsamples": 8, "seqlen": 32, "seed": 1},
              "seconds": {"total": 3.0}}
    rid = h.add(report, key="grid/cell1")
    assert h.has_key("grid/cell1") and not h.has_key("grid/cell2")
    h.update(rid, {**report, "ppl_pruned": 12.5}, export_path=tmp_path / "out")
    row = h.get(rid)
    assert row.ppl_pruned == 12.5 and row.export_path == str(tmp_path / "out")
    assert row.calib_source == "selfgen" and row.seconds == 3.0
    assert [r.id for r in History(tmp_path / "h.sqlite3").runs("grid/")] == [rid]
    h.delete(rid)
    assert h.runs() == []
