"""The relative output error of each pruned module, ||(W - W_pruned) X|| / ||W X||, measured on a
fixed sample of its calibration inputs: checked against the same ratio computed in the test from
the dense model's own inputs, and carried into the report and the history."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from prunestudio.core.config import PruneConfig
from prunestudio.core.events import ModulePruned, run_to_completion
from prunestudio.core.prune.pipeline import iter_prune
from prunestudio.core.run.history import History
from prunestudio.core.run.report import output_error_summary

V = 96


def _ids(n=4, seqlen=32):
    return torch.randint(3, V, (n, seqlen), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method,structure", [("wanda", "unstructured"), ("sparsegpt", "unstructured"),
                                              ("sparsegpt", "2:4")])
def test_block0_output_error_equals_the_ratio_on_the_first_batch(method, structure):
    """With a first batch of 2 x 32 = 64 token rows (under the 128 kept), the sample is that whole
    batch: block 0's modules read the embeddings' norm (q/k/v), and the dense block's activations."""
    ids = _ids()
    dense, model = tiny_model("llama", V), tiny_model("llama", V)
    inputs: dict[str, torch.Tensor] = {}
    def keep(name):
        def hook(module, args):
            inputs.setdefault(name, args[0].reshape(-1, args[0].shape[-1]))
        return hook

    hooks = [mod.register_forward_pre_hook(keep(name))
             for name, mod in dense.model.layers[0].named_modules() if isinstance(mod, torch.nn.Linear)]
    with torch.no_grad():
        dense(input_ids=ids[:2])
    for h in hooks:
        h.remove()
    events: list[ModulePruned] = []
    cfg = PruneConfig(method=method, sparsity=0.5, structure=structure, batch_size=2, one_pass=False)
    res = run_to_completion(iter_prune(model, ids, cfg),
                            lambda ev: events.append(ev) if isinstance(ev, ModulePruned) else None)
    for name, x in inputs.items():
        w = dense.model.layers[0].get_submodule(name).weight
        wp = model.model.layers[0].get_submodule(name).weight
        y, d = x @ w.t(), x @ (w - wp).t()
        expected = (d.norm() / y.norm()).item()
        assert res.module_info[f"0.{name}"]["output_error"] == pytest.approx(expected, rel=1e-4), name
        ev = next(e for e in events if e.block == 0 and e.name == name)
        rows = (d.norm(dim=0) / y.norm(dim=0)).detach().numpy()
        assert ev.info["row_error"] == pytest.approx(rows, rel=1e-3, abs=1e-6)
        assert 0 < expected < 1
    summary = output_error_summary(res.module_info)
    errs = [v["output_error"] for v in res.module_info.values()]
    assert summary["mean"] == pytest.approx(sum(errs) / len(errs)) and summary["max"] == max(errs)


def test_magnitude_without_data_measures_nothing():
    res = run_to_completion(iter_prune(tiny_model("llama", V), None, PruneConfig(method="magnitude")))
    assert all("output_error" not in v for v in res.module_info.values())
    assert output_error_summary(res.module_info) is None


def test_the_history_keeps_the_mean_error(tmp_path):
    h = History(tmp_path / "h.sqlite3")
    report = {"method": "wanda", "model": {"name": "m"}, "output_error": {"mean": 0.25, "max": 0.5}}
    row = h.get(h.add(report))
    assert row.output_error == 0.25
    h.update(row.id, {**report, "output_error": {"mean": 0.125}})
    assert h.get(row.id).output_error == 0.125
    assert h.get(h.add({"method": "magnitude", "model": {"name": "m"}})).output_error is None
