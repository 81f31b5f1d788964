"""The dense baseline after pruning (core/run/evaluation.py: lookup_dense, iter_dense_baseline): the
dense cache found with the signature the original weights had, otherwise a second copy of the
original model measured and let go; the pruned model in memory is never touched."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from conftest import CORPUS, byte_tokenizer, tiny_model
from prunestudio.core.config import PruneConfig, Recipe
from prunestudio.core.evaluate import ppl_cache
from prunestudio.core.evaluate.perplexity import eval_ids, iter_perplexity
from prunestudio.core.events import Message, PhaseStarted, run_to_completion
from prunestudio.core.run import evaluation as ev
from prunestudio.core.run.evaluation import EvalSettings, iter_dense_baseline, lookup_dense
from prunestudio.core.run.load import LoadArgs, iter_load
from prunestudio.core.run.run import Evaluation, iter_run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = byte_tokenizer()
    d = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_model("llama", vocab_size=len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture()
def settings(tmp_path):
    p = tmp_path / "eval.txt"
    p.write_text((CORPUS + "\n") * 10, encoding="utf-8")
    return EvalSettings(str(p), 16, 3)


def _args(model_dir):
    return LoadArgs(str(model_dir), "cpu", "fp32")


def _pruned(model_dir, settings=None, dense_first=False):
    """A pruned model and the signature its dense weights had before (as the app takes it at load)."""
    loaded = run_to_completion(iter_load(_args(model_dir)))
    sig = ppl_cache.weights_signature(loaded.model)
    evaluation = Evaluation(settings, dense=True, pruned=False) if dense_first else None
    out = run_to_completion(iter_run(loaded, Recipe(model=str(model_dir), prune=PruneConfig(method="magnitude")),
                                     None, evaluation))
    return loaded, sig, out


def _reference_dense(model_dir, settings):
    """The dense perplexity computed here, independently of the cache and of the code under test."""
    fresh = run_to_completion(iter_load(_args(model_dir)))
    ids = eval_ids(fresh.tokenizer, settings.source, settings.seqlen)
    return run_to_completion(iter_perplexity(fresh.model, ids, settings.seqlen, batch_size=4,
                                             max_windows=settings.max_windows))


def test_after_pruning_the_dense_number_comes_from_a_second_copy_then_from_the_cache(model_dir, settings, monkeypatch):
    pruned, sig, _ = _pruned(model_dir)
    before = {k: v.clone() for k, v in pruned.model.state_dict().items()}
    assert lookup_dense(sig, pruned, settings) is None  # nothing measured yet

    loads: list = []
    real_load = ev.iter_load

    def counting_load(args, should_stop=None):
        loaded = yield from real_load(args)
        loads.append(weakref.ref(loaded.model))
        return loaded

    monkeypatch.setattr(ev, "iter_load", counting_load)
    events: list = []
    got = run_to_completion(iter_dense_baseline(pruned, _args(model_dir), settings, sig), events.append)
    assert len(loads) == 1
    gc.collect()
    assert loads[0]() is None  # the second copy is let go
    assert got.ppl == pytest.approx(_reference_dense(model_dir, settings), rel=1e-6)
    assert (got.source, got.seqlen, got.max_windows, got.windows) == (settings.source, 16, 3, 3)
    texts = [e.text for e in events if isinstance(e, Message)]
    assert any(t.startswith("Loading a second copy of the original model") and "more memory" in t for t in texts)
    assert "ppl-dense" in [e.phase for e in events if isinstance(e, PhaseStarted)]
    # the pruned model in memory is untouched
    assert all(torch.equal(before[k], v) for k, v in pruned.model.state_dict().items())

    # again: the cache answers at once, without loading anything
    events = []
    again = run_to_completion(iter_dense_baseline(pruned, _args(model_dir), settings, sig), events.append)
    assert again.ppl == got.ppl and again.windows == 3 and len(loads) == 1
    assert not any(isinstance(e, PhaseStarted) for e in events)
    assert any(isinstance(e, Message) and "known from the cache" in e.text for e in events)
    # other windows: not the same number, measured again
    assert lookup_dense(sig, pruned, EvalSettings(settings.source, 16, 2)) is None
    # the pruned weights' own signature never finds the dense number
    assert lookup_dense(ppl_cache.weights_signature(pruned.model), pruned, settings) is None


def test_a_run_that_measured_dense_first_fills_the_cache_for_later(model_dir, settings, monkeypatch):
    pruned, sig, out = _pruned(model_dir, settings, dense_first=True)
    monkeypatch.setattr(ev, "iter_load", lambda *a, **k: pytest.fail("loaded a second copy"))
    got = lookup_dense(sig, pruned, settings)
    assert got is not None and got.ppl == out.ppl_dense and got.windows == 3
    assert run_to_completion(iter_dense_baseline(pruned, _args(model_dir), settings, sig)).ppl == out.ppl_dense


def test_without_a_signature_the_second_copy_is_measured(model_dir, settings):
    """Weights held on disk have no signature: the cache cannot be asked, the copy is measured."""
    pruned, _, _ = _pruned(model_dir)
    assert lookup_dense(None, pruned, settings) is None
    events: list = []
    got = run_to_completion(iter_dense_baseline(pruned, _args(model_dir), settings, None), events.append)
    assert got.ppl == pytest.approx(_reference_dense(model_dir, settings), rel=1e-6)
    assert not any(isinstance(e, Message) and e.level == "warning" for e in events)


def test_changed_files_are_measured_with_a_warning(model_dir, settings):
    pruned, sig, _ = _pruned(model_dir)
    events: list = []
    run_to_completion(iter_dense_baseline(pruned, _args(model_dir), settings, "0" * 64), events.append)
    assert any(isinstance(e, Message) and e.level == "warning" and "files changed" in e.text for e in events)
