"""Threads that fit the machine (core/model/threads.py): the policy with fake CPU counts and loads,
the measurement with a fake psutil, the scope a job runs in, and what the run and the CLI record."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from conftest import CORPUS, byte_tokenizer, tiny_model
from prunestudio.core.cli.commands import main
from prunestudio.core.config import PruneConfig, Recipe
from prunestudio.core.errors import ConfigError
from prunestudio.core.events import Message, run_to_completion
from prunestudio.core.model import threads
from prunestudio.core.run.load import LoadArgs, iter_load
from prunestudio.core.run.run import iter_run


@pytest.fixture(autouse=True)
def _no_request(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    threads.set_requested(None)
    yield
    threads.set_requested(None)


def _no_measuring(*_a, **_k):
    raise AssertionError("the load was measured although it was given or not needed")


@pytest.mark.parametrize("cpus, busy, current, expected", [
    (2, 0.0, 2, 2),     # idle: torch's own choice
    (2, 0.4, 2, 2),     # a little background work: rounds to 2 free CPUs
    (2, 0.6, 2, 1),     # more than half a CPU busy: the barrier-bound threads would wait
    (2, 1.2, 2, 1),
    (2, 5.0, 2, 1),     # overloaded: never fewer than one
    (8, 2.6, 8, 5),     # 5.4 CPUs free
    (8, 0.0, 4, 4),     # never more than torch has (its default or OMP_NUM_THREADS)
    (16, 1.0, 8, 8),
    (4, 0.0, 16, 4),    # never more than the CPUs available (an affinity mask, a container)
])
def test_auto_takes_the_free_cpus(monkeypatch, cpus, busy, current, expected):
    monkeypatch.setattr(threads, "busy_cpus", _no_measuring)
    c = threads.choose_threads(None, cpus=cpus, busy=busy, current=current)
    assert (c.threads, c.requested, c.cpus, c.busy) == (expected, None, cpus, busy)
    assert c.reason.startswith(f"{expected} thread")
    assert ("torch would use" in c.reason) == (expected < min(cpus, current))


def test_auto_measures_the_load_only_when_there_is_a_choice(monkeypatch):
    monkeypatch.setattr(threads, "busy_cpus", _no_measuring)
    # torch set to one thread (the test suite, OMP_NUM_THREADS=1) or one CPU: nothing to measure
    assert threads.choose_threads(None, cpus=8, current=1).threads == 1
    assert threads.choose_threads(None, cpus=1, current=8).threads == 1
    monkeypatch.setattr(threads, "busy_cpus", lambda: 3.0)
    c = threads.choose_threads(None, cpus=4, current=4)
    assert (c.threads, c.busy) == (1, 3.0)
    # the load cannot be read: torch's count, capped by the CPUs
    monkeypatch.setattr(threads, "busy_cpus", lambda: None)
    c = threads.choose_threads(None, cpus=4, current=6)
    assert (c.threads, c.busy) == (4, None) and "could not be read" in c.reason
    assert "busy" not in c.to_dict() and c.to_dict()["requested"] == "auto"


def test_a_requested_number_is_taken_as_it_is(monkeypatch):
    monkeypatch.setattr(threads, "busy_cpus", _no_measuring)
    c = threads.choose_threads(3, cpus=2, current=1)
    assert (c.threads, c.requested) == (3, 3) and "more than the 2 CPU(s)" in c.reason
    assert c.to_dict()["requested"] == 3
    assert threads.choose_threads(1, cpus=8, current=8).threads == 1


@pytest.mark.parametrize("value, expected", [(None, None), ("auto", None), ("AUTO ", None), ("0", None),
                                             (0, None), ("3", 3), (2, 2)])
def test_parse_threads(value, expected):
    assert threads.parse_threads(value) == expected


@pytest.mark.parametrize("value", ["many", "-1", -2, 1.5, True])
def test_parse_threads_refuses_nonsense(value):
    with pytest.raises(ConfigError, match="Threads must be 'auto' or a whole number"):
        threads.parse_threads(value)


def test_the_request_comes_from_the_app_or_cli_then_the_environment(monkeypatch):
    assert threads.requested() is None
    monkeypatch.setenv(threads.ENV, "2")
    assert threads.requested() == 2
    threads.set_requested(5)
    assert threads.requested() == 5
    threads.set_requested(None)
    monkeypatch.setenv(threads.ENV, "lots")  # malformed: auto
    assert threads.requested() is None


def test_cpus_available_reads_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    assert threads.cpus_available() == 2


def test_busy_cpus_counts_other_processes_on_this_process_cpus(monkeypatch):
    class FakeProcess:
        def cpu_percent(self, interval=None):
            return 30.0  # this process: 0.3 CPU

    fake = types.SimpleNamespace(Process=FakeProcess,
                                 cpu_percent=lambda interval=None, percpu=False: [100.0, 50.0, 90.0, 90.0])
    monkeypatch.setitem(sys.modules, "psutil", fake)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert threads.busy_cpus(interval=0) == pytest.approx(1.5 - 0.3)
    # without psutil: the load average
    monkeypatch.setitem(sys.modules, "psutil", None)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.75, 1.0, 0.5))
    assert threads.busy_cpus(interval=0) == 1.75


def test_a_job_uses_its_choice_and_restores_the_count(monkeypatch):
    before = torch.get_num_threads()
    threads.set_requested(2)
    with threads.job_threads() as outer:
        assert outer.threads == 2 and torch.get_num_threads() == 2 and threads.active() is outer
        with threads.job_threads(requested_n=1) as inner:  # a job inside a job keeps the outer choice
            assert inner is outer and torch.get_num_threads() == 2
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before and threads.active() is None
    with pytest.raises(RuntimeError):
        with threads.job_threads(requested_n=3):
            raise RuntimeError("a failed job")
    assert torch.get_num_threads() == before and threads.active() is None


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = byte_tokenizer(300)
    d = tmp_path_factory.mktemp("threads-model") / "tiny-llama"
    tiny_model("llama", vocab_size=len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_a_run_says_and_records_its_threads_and_prunes_the_same(model_dir):
    recipe = Recipe(model=str(model_dir), prune=PruneConfig(method="magnitude"))

    def run(n):
        threads.set_requested(n)
        events: list = []
        loaded = run_to_completion(iter_load(LoadArgs(str(model_dir), "cpu", "fp32")))
        out = run_to_completion(iter_run(loaded, recipe), events.append)
        return out, events

    before = torch.get_num_threads()
    one, events = run(1)
    assert one.report["threads"]["threads"] == 1 and one.report["threads"]["requested"] == 1
    assert [e.text for e in events if isinstance(e, Message) and e.text.startswith("Threads:")] == [
        "Threads: 1 thread(s) as asked."]
    two, _ = run(2)
    assert two.report["threads"]["threads"] == 2 and torch.get_num_threads() == before
    for name, w in one.loaded.model.state_dict().items():  # how fast, not what
        assert torch.equal(w, two.loaded.model.state_dict()[name]), name


def test_cli_threads_flag_reaches_the_report(capsys, model_dir, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text((CORPUS + "\n") * 30, encoding="utf-8")
    report = tmp_path / "report.json"
    args = ["prune", "--model", str(model_dir), "--method", "wanda", "--calibration", str(text),
            "--nsamples", "2", "--seqlen", "16", "--device", "cpu", "--dtype", "fp32", "--threads", "1",
            "--out", str(tmp_path / "out"), "--report", str(report)]
    assert main(args) == 0, capsys.readouterr().err
    assert json.loads(report.read_text())["threads"]["requested"] == 1
    assert main(["--threads", "lots", "doctor"]) == 1
    assert "Threads must be 'auto' or a whole number" in capsys.readouterr().err


def test_self_generation_uses_its_threads_and_makes_the_same_set():
    from _selfgen_helpers import make_model, make_tokenizer
    from prunestudio.core.calib import selfgen as sg

    tok = make_tokenizer("llama")
    model = make_model("llama", tok)
    settings = sg.GenerationSettings(n=4, seqlen=12, batch_size=2, seed=0)
    seen_threads: list[int] = []

    def gen(n):
        threads.set_requested(n)
        events: list = []
        cs = run_to_completion(sg.iter_generate(model, tok, settings),
                               lambda e: (events.append(e), seen_threads.append(torch.get_num_threads())))
        return cs, events

    before = torch.get_num_threads()
    one, events = gen(1)
    assert isinstance(events[0], Message) and events[0].text == "Threads: 1 thread(s) as asked."
    two, events = gen(2)
    assert events[0].text == "Threads: 2 thread(s) as asked." and 2 in seen_threads
    assert torch.get_num_threads() == before
    assert [s.input_ids for s in one.samples] == [s.input_ids for s in two.samples]



@pytest.mark.parametrize("method", ["wanda", "magnitude", "sparsegpt"])
def test_a_large_matrix_keeps_every_thread_and_prunes_the_same(monkeypatch, method):
    """A matrix of LARGE_MATRIX elements or more is pruned with all threads (its kernels are long),
    a smaller one with one; the mask and the weights do not depend on it."""
    from prunestudio.core.model import devices
    from prunestudio.core.prune import block
    from prunestudio.core.prune.methods import registry
    from prunestudio.core.prune.stats import InputStats

    g = torch.Generator().manual_seed(0)
    dense, x = torch.randn(96, 64, generator=g), torch.randn(512, 64, generator=g)
    cfg = PruneConfig(method=method, sparsity=0.5)
    needs = registry.stats_needs(cfg)
    st = InputStats(64, needs, "cpu") if needs is not None else None
    if st is not None:
        st.add(x)
    asked: list[int] = []
    real = devices.one_cpu_thread

    def spy(device):
        asked.append(torch.get_num_threads())
        return real(device)

    monkeypatch.setattr(devices, "one_cpu_thread", spy)
    out = {}
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for large in (True, False):
            monkeypatch.setattr(devices, "LARGE_MATRIX", dense.numel() if large else dense.numel() + 1)
            mod = torch.nn.Linear(64, 96, bias=False)
            with torch.no_grad():
                mod.weight.copy_(dense)
            asked.clear()
            outcome = block._prune_one(mod, st, 0.5, cfg, 0, 0, 512, "mlp.up_proj", True)
            out[large] = (outcome.mask, mod.weight.detach().clone(), list(asked))
    finally:
        torch.set_num_threads(n)
    assert out[False][2][:1] == [2]  # the small matrix went to one thread at once
    if method != "sparsegpt":  # (SparseGPT's column loop always runs on one thread, inside the method)
        assert out[True][2] == []
    assert torch.equal(out[True][0], out[False][0])
    if method == "sparsegpt":  # its Hessian products and factorisations round by thread count
        torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(out[True][1], out[False][1])
