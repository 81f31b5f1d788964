"""The one run path (core/run/load.py, core/run/run.py): load, check the recipe, calibrate or reuse
a set, measure, prune, report; what the CLI, the GUI's tasks and experiment cells all call."""

from __future__ import annotations

import pytest
import torch
from conftest import CORPUS, tiny_model
from prunestudio.core.config import CalibConfig, PruneConfig, Recipe
from prunestudio.core.errors import Cancelled, ConfigError
from prunestudio.core.events import Message, PhaseStarted, run_to_completion
from prunestudio.core.run.calibration import build_calibration
from prunestudio.core.run.evaluation import EvalSettings
from prunestudio.core.run.load import LoadArgs, held_on_disk, iter_load
from prunestudio.core.run.run import DenseMeasured, Evaluation, PruneFinished, iter_run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny Llama (3 blocks, hidden size 64) saved as a Hugging Face folder."""
    d = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    p = tmp_path_factory.mktemp("text") / "corpus.txt"
    p.write_text((CORPUS + "\n") * 60, encoding="utf-8")
    return p


def _load(model_dir, **kw):
    return run_to_completion(iter_load(LoadArgs(str(model_dir), "cpu", "fp32", **kw)))


def _weights(loaded):
    return {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}


def _phases(events):
    return [e.phase for e in events if isinstance(e, PhaseStarted)]


def test_load_announces_the_model_and_holds_it_as_asked(model_dir, tmp_path):
    events: list = []
    loaded = run_to_completion(iter_load(LoadArgs(str(model_dir), "cpu", "fp32")), events.append)
    texts = [e.text for e in events if isinstance(e, Message)]
    assert any(t.startswith("Loaded tiny-llama: LlamaForCausalLM, 3 blocks") for t in texts), texts
    assert _phases(events) == ["load"] and not held_on_disk(loaded)
    lazy = _load(model_dir, offload="disk", offload_dir=str(tmp_path / "blocks"))
    assert held_on_disk(lazy)
    # a recipe's load: its model and its pruning's offload mode
    args = LoadArgs.of_recipe(Recipe(model="m", device="cpu", prune=PruneConfig().with_offload_mode("disk")))
    assert (args.spec, args.device, args.offload, args.on_disk) == ("m", "cpu", "disk", True)
    assert LoadArgs.of_recipe(Recipe(prune=PruneConfig(offload=False))).offload == "none"
    with pytest.raises(ConfigError, match="Offload must be one of none, cpu, disk"):
        LoadArgs("m", offload="tape")
    with pytest.raises(Cancelled):
        run_to_completion(iter_load(LoadArgs(str(model_dir), "cpu", "fp32"), should_stop=lambda: True))


@pytest.mark.parametrize("prune, message", [
    (PruneConfig(method="wanda", structure="2:6"), r"N:M structure 2:6 needs .* multiple of 6"),
    (PruneConfig(method="wanda", block_sparsity=(0.5, 0.5)), "2 per-block sparsities given, tiny-llama has 3 blocks."),
])
def test_a_run_refuses_an_impossible_recipe_before_anything_long(model_dir, text, prune, message):
    loaded = _load(model_dir)
    before = _weights(loaded)
    recipe = Recipe(model=str(model_dir), prune=prune, calibration=CalibConfig(source=str(text), nsamples=2, seqlen=16))
    asked: list = []
    events: list = []
    with pytest.raises(ConfigError, match=message):
        run_to_completion(iter_run(loaded, recipe, None, Evaluation(EvalSettings(str(text), 16, 1)),
                                   should_stop=lambda: asked.append(1) or False), events.append)
    assert asked == [] and events == []  # refused before calibration, evaluation or pruning
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())


def test_a_given_set_is_used_as_it_was_and_equals_building_it(model_dir, text):
    cal = CalibConfig(source=str(text), nsamples=4, seqlen=32, seed=3)
    recipe = Recipe(model=str(model_dir), prune=PruneConfig(method="wanda"), calibration=cal)
    loaded = _load(model_dir)
    given = run_to_completion(build_calibration(loaded, cal))
    events: list = []
    reused = run_to_completion(iter_run(loaded, recipe, given), events.append)
    assert "calibrate" not in _phases(events) and "calibration" not in reused.seconds
    assert reused.calibration is not given and reused.calibration.sha256() == given.sha256()
    assert reused.report["calibration"]["sha256"] == given.sha256()
    given.samples[0].dropped = True  # an edit after the run leaves the run's own set alone
    assert len(reused.calibration) == 4

    fresh_model = _load(model_dir)
    events = []
    built = run_to_completion(iter_run(fresh_model, recipe), events.append)
    assert "calibrate" in _phases(events) and "calibration" in built.seconds
    assert built.calibration.sha256() == reused.calibration.sha256()
    for name, w in fresh_model.model.state_dict().items():
        assert torch.equal(w, loaded.model.state_dict()[name]), name  # bit-identical weights


def test_evaluation_dense_known_and_a_cancel_of_the_pruned_one(model_dir, text):
    es = EvalSettings(str(text), 32, 2)
    recipe = Recipe(model=str(model_dir), prune=PruneConfig(method="magnitude"))
    events: list = []
    out = run_to_completion(iter_run(_load(model_dir), recipe, None, Evaluation(es)), events.append)
    assert [e.ppl for e in events if isinstance(e, DenseMeasured)] == [out.ppl_dense]
    assert [e.result for e in events if isinstance(e, PruneFinished)] == [out.result]
    assert out.ppl_pruned > out.ppl_dense > 1 and out.evaluation == es
    assert out.report["eval"] == {"ppl_source": "corpus.txt", "seqlen": 32, "windows": 2, "max_windows": 2}

    # a dense perplexity the caller knows is reported, not measured again
    events = []
    known = run_to_completion(iter_run(_load(model_dir), recipe, None, Evaluation(es, known_dense=12.5)),
                              events.append)
    assert known.ppl_dense == 12.5 and "ppl-dense" not in _phases(events)
    assert not any(isinstance(e, DenseMeasured) for e in events)
    assert known.ppl_pruned == out.ppl_pruned

    # cancelled while the pruned model is measured: the run fails, unless the caller keeps the model
    def stop_in_pruned_eval(seen):
        return lambda: "ppl-pruned" in _phases(seen)

    seen: list = []
    with pytest.raises(Cancelled):
        run_to_completion(iter_run(_load(model_dir), recipe, None, Evaluation(es, dense=False),
                                   stop_in_pruned_eval(seen)), seen.append)
    seen = []
    loaded = _load(model_dir)
    kept = run_to_completion(iter_run(loaded, recipe, None, Evaluation(es, dense=False, keep_pruned_on_cancel=True),
                                      stop_in_pruned_eval(seen)), seen.append)
    assert kept.ppl_pruned is None and kept.ppl_dense is None and kept.loaded is loaded
    assert abs(kept.result.global_sparsity - 0.5) < 0.01 and kept.result.complete
    assert "eval" not in kept.report  # nothing was measured
    assert any(isinstance(e, Message) and "pruned model is kept" in e.text for e in seen)
