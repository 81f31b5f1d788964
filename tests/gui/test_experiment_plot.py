"""plots.png of an experiment grid, drawn by the GUI package."""

from __future__ import annotations

from prunestudio.core.experiment import GridSpec, summarize
from prunestudio.gui.views.experiment_plot import write_plot


def test_plot_is_written(tmp_path, qapp):
    (tmp_path / "corpus.txt").write_text("text\n", encoding="utf-8")
    (tmp_path / "eval.txt").write_text("text\n", encoding="utf-8")
    spec = GridSpec.from_dict({
        "name": "t", "model": "model",
        "sources": [{"label": "corpus", "source": "corpus.txt"}, {"label": "selfgen", "source": "selfgen"}],
        "methods": ["wanda"], "sparsities": [0.5], "structures": ["unstructured", "2:4"], "seeds": [0, 1],
        "calibration": {"nsamples": 4, "seqlen": 32},
        "eval": {"ppl": ["eval.txt"], "seqlen": 32, "max_windows": 3},
    }, tmp_path)
    finished = [(c, {"ppl": {"eval.txt": 20.0 + i}, "tasks_mean_acc": None, "tasks": {}, "seconds": {}})
                for i, c in enumerate(spec.cells())]
    rows = summarize(spec, finished)
    path = write_plot(spec, rows, tmp_path / "plots.png")
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
