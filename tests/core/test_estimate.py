"""Time estimates before long work (core/run/estimate.py) and the machine probe (core/model/speed.py).

No test here compares a time with a fixed number of seconds: the estimates are checked for
moving the right way with each setting, for their arithmetic against hand-computed FLOP counts,
and (once) against a measured short run within a wide factor.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import pytest

from prunestudio.core.config import CalibConfig, PruneConfig
from prunestudio.core.events import PhaseProgress
from prunestudio.core.model.speed import MachineSpeed, ModelFacts, machine_speed, model_facts
from prunestudio.core.run import estimate

# a model the size of the demo (30 blocks, hidden 576, MLP 1536, vocabulary 49152)
H, I, V, B = 576, 1536, 49152, 30
FACTS = ModelFacts(params=134_515_008, head_params=V * H, hidden=H, num_blocks=B, vocab=V,
                   block_linears=((H, H), (192, H), (192, H), (H, H), (I, H), (I, H), (H, I)),
                   dtype="float32", device="cpu")
SPEED = MachineSpeed(50e9, "test", probed=False)


def test_forward_flops_count_weights_attention_and_head():
    per_block = H * H * 2 + 192 * H * 2 + I * H * 3
    assert FACTS.block_params == B * per_block
    assert FACTS.forward_flops_per_token(0, head=False) == 2 * B * per_block
    assert FACTS.forward_flops_per_token(100) == 2 * B * per_block + 4 * B * H * 100 + 2 * V * H


def test_selfgen_grows_with_samples_and_length_and_batches_help():
    base = CalibConfig(source="selfgen", nsamples=64, seqlen=512)
    t = estimate.selfgen(FACTS, SPEED, base).seconds
    # twice the samples at batch 32: 159 in 5 batches of 31-32 instead of 79 in 27 + 26 + 26 (fuller
    # batches are faster per token); at the default batch (80) 79 samples are one batch and 159 two
    # (80 + 79), so twice the time and the one sample more
    small = CalibConfig(source="selfgen", nsamples=64, seqlen=512)
    double_cfg = CalibConfig(source="selfgen", nsamples=128, seqlen=512)
    t32 = estimate.selfgen(FACTS, SPEED, small, batch_size=32).seconds
    assert 1.6 * t32 < estimate.selfgen(FACTS, SPEED, double_cfg, batch_size=32).seconds < 2 * t32
    assert 2 * t < estimate.selfgen(FACTS, SPEED, double_cfg).seconds < 2 * t * 80 / 79
    assert t < t32
    assert estimate.selfgen(FACTS, SPEED, CalibConfig(source="selfgen", nsamples=64, seqlen=1024)).seconds > 2 * t
    # the filter drops 20 %: 79 samples are generated for 64 kept (79 - floor(15.8)); without it, 64
    assert estimate.selfgen_samples(base) == 79
    assert estimate.selfgen(FACTS, SPEED, CalibConfig(source="selfgen", nsamples=64, seqlen=512,
                                                      drop_top=0.0)).seconds < t
    # decoding 32 at a time is faster per token than one at a time
    assert estimate.selfgen(FACTS, SPEED, base, batch_size=1).seconds > 5 * t
    # twice the machine speed, half the time
    assert estimate.selfgen(FACTS, MachineSpeed(100e9, "x", False), base).seconds == pytest.approx(t / 2)


def test_paper_protocol_counts_samples_of_varying_length():
    """The paper's protocol writes about 5 samples of about a third of ``seqlen`` per window, in
    batches whose rows leave as they end: more work than the windows protocol for the same
    windows, and slower per token (fewer rows per step)."""
    paper = CalibConfig(source="selfgen:c4", protocol="paper", nsamples=64, seqlen=512)
    windows = CalibConfig(source="selfgen", nsamples=64, seqlen=512)
    assert estimate.selfgen_samples(paper) == math.ceil(64 * estimate.PAPER_SAMPLES_PER_WINDOW)
    p, w = estimate.selfgen(FACTS, SPEED, paper), estimate.selfgen(FACTS, SPEED, windows)
    assert p.flops > w.flops and p.seconds / p.flops > w.seconds / w.flops
    twice = estimate.selfgen(FACTS, SPEED, CalibConfig(source="selfgen:c4", protocol="paper", nsamples=128,
                                                       seqlen=512))
    assert twice.seconds == pytest.approx(2 * p.seconds, rel=0.02)


def test_pruning_passes_and_methods():
    def est(**kw):
        return estimate.pruning(FACTS, SPEED, PruneConfig(**kw), 64, 512)

    def secs(**kw):
        return est(**kw).seconds

    wanda2, wanda1 = est(method="wanda", one_pass=False), est(method="wanda", one_pass=True)
    # the per-module work is the same in both orders; the passes' part doubles
    assert wanda2.module_seconds == pytest.approx(wanda1.module_seconds)
    assert wanda1.module_seconds > 0
    assert wanda2.seconds - wanda2.module_seconds == pytest.approx(2 * (wanda1.seconds - wanda1.module_seconds))
    # one pass, by hand: the block products at the curve's share of the probe, plus the hooks' and
    # statistics' cost per token and hidden unit
    tokens = 64 * 512
    by_hand = (tokens * (2.0 * FACTS.block_params + 4.0 * B * H * 256) / (SPEED.flops * estimate.prune_forward_efficiency(H))
               + tokens * B * H * estimate.PASS_FLOPS_PER_TOKEN_HIDDEN / SPEED.flops)
    assert wanda1.seconds - wanda1.module_seconds == pytest.approx(by_hand)
    owl = est(method="wanda", owl=True, one_pass=False)  # OWL's pre-pass: a third pass
    assert owl.seconds - owl.module_seconds == pytest.approx(1.5 * (wanda2.seconds - wanda2.module_seconds))
    assert secs(method="sparsegpt", one_pass=True) > wanda1.seconds  # the Hessians and their solves
    # magnitude: no calibration, no passes: only its masks, a fixed cost per weight
    mag = est(method="magnitude")
    assert mag.flops == 0.0
    assert mag.seconds == pytest.approx(FACTS.block_params * estimate.MODULE_FLOPS_PER_WEIGHT / SPEED.flops)
    assert estimate.block_passes(PruneConfig(method="magnitude", owl=True)) == 1
    more = estimate.pruning(FACTS, SPEED, PruneConfig(method="sparsegpt"), 128, 512).seconds
    assert more > secs(method="sparsegpt")
    # a disk-offloaded run also writes every pruned block
    disk = est(method="wanda", one_pass=False, offload=True, offload_to="disk")
    assert disk.module_seconds == pytest.approx(wanda2.module_seconds)
    assert disk.seconds - wanda2.seconds == pytest.approx(FACTS.block_params * estimate.DISK_FLOPS_PER_WEIGHT / SPEED.flops)


def test_pruning_forward_share_grows_with_the_hidden_size_and_16_bit_work_runs_at_the_float32_rate():
    f32 = [estimate.prune_forward_efficiency(h) for h in (576, 1536, 5120)]
    b16 = [estimate.prune_forward_efficiency(h, "bfloat16", "cpu") for h in (576, 1536, 5120)]
    assert f32 == sorted(f32) and b16 == sorted(b16) and max(f32 + b16) < 1.0
    assert b16[0] < f32[0]  # small bf16 products run further below their (higher) probe
    assert estimate.prune_forward_efficiency(576, "bfloat16", "cuda:0") == f32[0]
    bf = dataclasses.replace(FACTS, dtype="bfloat16")
    fast = MachineSpeed(SPEED.flops * estimate.CPU_16BIT_PROBE_RATIO, "bf16", probed=False)
    # the bf16 probe is faster, but masks are computed in float32: the same per-module seconds
    mag = estimate.pruning(bf, fast, PruneConfig(method="magnitude"), 64, 512)
    assert mag.seconds == pytest.approx(estimate.pruning(FACTS, SPEED, PruneConfig(method="magnitude"), 64, 512).seconds)
    # and the passes take less time than in float32 at that faster probe, more than the probe ratio implies
    w32 = estimate.pruning(FACTS, SPEED, PruneConfig(method="wanda"), 64, 512)
    w16 = estimate.pruning(bf, fast, PruneConfig(method="wanda"), 64, 512)
    rest32, rest16 = w32.seconds - w32.module_seconds, w16.seconds - w16.module_seconds
    assert rest32 / estimate.CPU_16BIT_PROBE_RATIO < rest16 < rest32


def test_perplexity_and_zeroshot_grow_with_their_sizes():
    short = estimate.perplexity(FACTS, SPEED, 32 * 512, 512).seconds
    assert estimate.perplexity(FACTS, SPEED, 64 * 512, 512).seconds == pytest.approx(2 * short)
    assert estimate.eval_tokens("wikitext2", 512, 32) == 32 * 512
    whole = estimate.eval_tokens("wikitext2", 512, None)
    assert whole == estimate.WIKITEXT2_TEST_TOKENS
    assert estimate.eval_tokens("c4", 1024, None) == 256 * 1024
    assert estimate.eval_tokens("hf:someone/unknown", 512, None) is None
    z1 = estimate.zeroshot(FACTS, SPEED, ["piqa"], 100).seconds
    assert estimate.zeroshot(FACTS, SPEED, ["piqa"], 200).seconds == pytest.approx(2 * z1)
    assert estimate.zeroshot(FACTS, SPEED, ["piqa", "arc_easy"], 100).seconds > z1
    assert estimate.zeroshot(FACTS, SPEED, ["piqa"], None).seconds > z1  # all 1,838 questions


def test_eval_tokens_of_a_file_by_its_size(tmp_path):
    f = tmp_path / "text.txt"
    f.write_text("word " * 10_000)
    n = estimate.eval_tokens(str(f), 512, None)
    assert 5_000 < n < 20_000  # 50,000 bytes at about 4 bytes a token


def test_words():
    assert estimate.about(30) == "under a minute on this machine"
    assert estimate.about(8 * 60 + 10) == "about 8 min on this machine"
    assert estimate.about(3 * 3600) == "about 3.0 h on this machine"
    assert estimate.about(math.nan) == "time unknown"
    assert estimate.progress_text(1, 4, 60) == "elapsed 1:00 min, about 3:00 min left"
    assert estimate.progress_text(0, 4, 5) == "elapsed 5 s"  # no rate yet: no ETA
    assert estimate.eta_seconds(4, 4, 60) is None


def test_phase_clock_uses_the_fraction_when_given():
    clock = estimate.PhaseClock()
    clock.start("generate", 100.0)
    # 2 of 80 samples done, but a quarter of the tokens: the ETA follows the tokens
    ev = PhaseProgress("generate", 2, 80, fraction=0.25)
    assert ev.share == 0.25
    assert clock.text("generate", ev.share, 130.0) == "elapsed 30 s, about 1:30 min left"
    assert PhaseProgress("ppl", 3, 12).share == 0.25


def test_model_facts_of_a_tiny_model(make_model):
    model = make_model("llama")
    f = model_facts(model)
    cfg = model.config
    assert f.num_blocks == cfg.num_hidden_layers
    assert f.hidden == cfg.hidden_size and f.vocab == cfg.vocab_size
    assert f.params == sum(p.numel() for p in model.parameters())
    h, i = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    assert sorted(f.block_linears) == sorted([(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)])
    assert f.dtype == "float32" and f.device == "cpu"


def test_machine_speed_is_cached_per_key_and_keeps_the_highest_probe(tmp_path, monkeypatch):
    from prunestudio.core.model import speed as sp

    cache = tmp_path / "speed.json"
    monkeypatch.setenv("PRUNESTUDIO_SPEED_CACHE", str(cache))
    monkeypatch.setattr(sp, "_MEMO", {})
    assert sp.known_speed("cpu", "float32", threads=1) is None  # never probed: unknown, and no probe now
    first = machine_speed("cpu", "float32", threads=1)  # a real probe
    assert first.probed and first.flops > 0
    assert json.loads(cache.read_text())[first.key] == first.flops
    assert "float32" in first.key and sp.cpu_model() in first.key and first.key.endswith("|1")

    probes: list[float] = []

    def fake_probe(device, dtype):
        probes.append(rates.pop(0))
        return probes[-1]

    monkeypatch.setattr(sp, "probe_flops", fake_probe)
    rates = [first.flops / 10, first.flops * 2]
    # a new process on a busy machine: it probes once, and the slower probe does not lower the figure
    monkeypatch.setattr(sp, "_MEMO", {})
    busy = machine_speed("cpu", "float32", threads=1)
    assert probes == [first.flops / 10] and busy.flops == first.flops
    assert machine_speed("cpu", "float32", threads=1) is busy and len(probes) == 1  # once per process
    # another process at a quiet moment: the faster probe raises it, for the next processes too
    monkeypatch.setattr(sp, "_MEMO", {})
    assert machine_speed("cpu", "float32", threads=1).flops == first.flops * 2
    monkeypatch.setattr(sp, "_MEMO", {})
    known = sp.known_speed("cpu", "float32", threads=1)
    assert known is not None and not known.probed and known.flops == first.flops * 2


def test_perplexity_estimate_within_a_factor_of_a_short_run():
    """A measured perplexity pass on a small model lands within 10x of its estimate (a wide band:
    the machine is shared; this checks the scale, not the precision)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from prunestudio.core.evaluate.perplexity import iter_perplexity
    from prunestudio.core.events import run_to_completion

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=2048, hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512)).eval()
    ids = torch.randint(0, 2048, (8 * 256,))
    facts = model_facts(model)
    speed = machine_speed("cpu", "float32")
    run_to_completion(iter_perplexity(model, ids, 256, max_windows=2))  # warm up
    t0 = time.perf_counter()
    run_to_completion(iter_perplexity(model, ids, 256, max_windows=8))
    measured = time.perf_counter() - t0
    est = estimate.perplexity(facts, speed, 8 * 256, 256).seconds
    assert est / 10 < measured < est * 10, (measured, est)


class _Tty:
    """A stream that says it is a terminal, keeping what is written."""

    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


def test_the_terminal_progress_lines_carry_elapsed_time_and_eta(monkeypatch):
    from prunestudio.core.cli import calib as cli_calib
    from prunestudio.core.cli import progress as cli_progress
    from prunestudio.core.events import PhaseStarted

    clock = iter([100.0, 140.0])  # the phase starts at 100 s; the progress comes 40 s later
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    out = _Tty()
    p = cli_calib._Progress(stream=out)
    p(PhaseStarted("generate", total=80))
    p(PhaseProgress("generate", 16, 80, "120 tokens/s", fraction=0.25))
    assert "generate: 16/80 120 tokens/s | elapsed 40 s, about 2:00 min left" in out.text

    clock = iter([10.0, 40.0])
    out = _Tty()
    printer = cli_progress.ProgressPrinter(stream=out)
    printer(PhaseStarted("ppl-dense", total=8))
    printer(PhaseProgress("ppl-dense", 2, 8))
    assert "2/8 | 30s elapsed, ~1m30s left" in out.text


def test_sixteen_bit_decoding_on_a_cpu_takes_a_smaller_share_of_its_probe():
    """At the same probe rate, a bf16 set on the CPU is estimated 1 / DECODE_16BIT_CPU as long as a
    float32 one (both protocols); on a GPU the dtype changes nothing but the probe."""
    import dataclasses

    for cal in (CalibConfig(source="selfgen", nsamples=64, seqlen=512),
                CalibConfig(source="selfgen:c4", nsamples=64, seqlen=512, protocol="paper")):
        fp32 = estimate.selfgen(FACTS, SPEED, cal).seconds
        bf16 = estimate.selfgen(dataclasses.replace(FACTS, dtype="bfloat16"), SPEED, cal).seconds
        assert bf16 == pytest.approx(fp32 / estimate.DECODE_16BIT_CPU)
        gpu = dataclasses.replace(FACTS, dtype="bfloat16", device="cuda:0")
        assert estimate.selfgen(gpu, SPEED, cal).seconds == pytest.approx(fp32)


def test_decoding_slows_with_the_cache_read_and_16_bit_forwards_take_a_smaller_share():
    import dataclasses

    e = estimate.decode_efficiency
    assert e(80, context=estimate.DECODE_HALF_CONTEXT) == pytest.approx(e(80) / 2)
    assert e(80, context=256) < e(80) and e(8) < e(32) < e(80)
    # a sample twice as long costs more than twice: every token reads a longer cache
    short = estimate.selfgen(FACTS, SPEED, CalibConfig(source="selfgen", nsamples=64, seqlen=256))
    long = estimate.selfgen(FACTS, SPEED, CalibConfig(source="selfgen", nsamples=64, seqlen=512))
    assert long.seconds / long.flops > short.seconds / short.flops
    # perplexity in bf16 on a CPU: a smaller share of the probe; on a GPU the dtype changes nothing
    fp32 = estimate.perplexity(FACTS, SPEED, 8 * 512, 512).seconds
    bf16 = estimate.perplexity(dataclasses.replace(FACTS, dtype="bfloat16"), SPEED, 8 * 512, 512).seconds
    assert bf16 == pytest.approx(fp32 / estimate.FORWARD_16BIT_CPU)
    gpu = dataclasses.replace(FACTS, dtype="bfloat16", device="cuda:0")
    assert estimate.perplexity(gpu, SPEED, 8 * 512, 512).seconds == pytest.approx(fp32)
