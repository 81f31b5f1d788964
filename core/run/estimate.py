"""How long the long jobs will take on this machine, said before they start, and ETAs while they run.

Each estimate is a count of floating-point operations divided by this machine's measured rate
(:func:`prunestudio.core.model.speed.machine_speed`: a quarter-second probe of matrix products in
the model's dtype on its device, cached) and by an efficiency: the share of the probe's rate each
kind of work reaches, measured on the demo model:

* **self-generation**: every generated token is one forward pass with the KV cache
  (:meth:`ModelFacts.forward_flops_per_token`, the context half the sample on average; the
  filter's perplexities come from the same passes); a decoding step multiplies thin matrices, so
  its rate grows with the batch and falls with the context (:func:`decode_efficiency`); with the paper's protocol the
  samples end at end-of-text, so their number and length are guesses from the demo model
  (:data:`PAPER_SAMPLES_PER_WINDOW`, :data:`PAPER_MEAN_LENGTH`) and a step has fewer rows;
* **pruning**: the block forward passes over the calibration tokens (two per block for the
  two-pass order, one for one pass, one more for OWL's pre-pass), at a share of the probe that grows
  with the hidden size (:func:`prune_forward_efficiency`), plus a cost per pass, token and hidden
  unit (hooks, statistics, copies) and, for SparseGPT-like methods (``Method.hessian``), the
  Hessians accumulated in the hooks (``2 tokens in²`` per module); then the per-module work, done
  in float32 whatever the model's dtype: every method's masks, counts, previews and output error
  cost a fixed amount per weight (:data:`MODULE_FLOPS_PER_WEIGHT`), SparseGPT factorises each
  Hessian (about ``in³``: the Cholesky, the inverse and its Cholesky) and updates the weights
  (``out in²``), and a disk-offloaded run writes each pruned block compactly
  (:data:`DISK_FLOPS_PER_WEIGHT`);
* **perplexity**: a forward pass over every evaluated token, the output head included (the
  number of tokens of a whole text is a guess for the named suites and files: see
  :func:`eval_tokens`);
* **zero-shot**: a forward pass over each question's every choice (context and choice).

Calibration (the constants below): ``python bench/estimate_check.py --threads 2 --dtype
float32|bfloat16`` and ``bench/block_forward.py`` on this project's machine, 2 cores of an AMD EPYC
Zen 4 with avx512_bf16, the machine otherwise idle, the demo model (SmolLM2-135M-Instruct); earlier
constants had been fitted at one thread on a machine shared with other test runs, and were up to 2x
off on an idle one (``bench/results/NOTES.md``, stop 28). Measured / estimated now, with the probe
taken in the same process (197-200 GFLOP/s float32, 424-425 bf16), float32 then bf16:

* self-generation, 8 samples x 64 tokens (one batch of 8): 0.96, 0.93; 32 x 128 (one batch of
  32): 0.92, 0.93; the app's default set (79 x 512, one batch of 80; measured in an earlier stop,
  158.1 s): 159 s estimated;
* perplexity, 8 WikiText-2 windows of 512 tokens: 0.97, 0.94; the whole test set (float32,
  ``bench/ppl_speed.py``, 628 s): 607 s estimated;
* pruning, 16 x 512 random-token windows: magnitude 2.5 / 2.7 s and 2.1 / 2.8 s; Wanda 28.1 / 28.4 s
  and 18.4 / 18.0 s; SparseGPT 37.5 / 36.6 s and 31.3 / 31.9 s; the 36-block Qwen3-32B-like model
  with disk offload (bf16, 16 x 128): 1,067 / 983 s;
* zero-shot, the first 50 PIQA questions: 0.43, 0.59 (high on purpose: see
  :data:`ZEROSHOT_EFFICIENCY`).

A busy machine, or one thread, takes longer than these say (the probe kept in the cache is the
highest ever measured, so a loaded machine does not lower it); the GUI says "about" and rounds to the
minute. A CPU of another kind will differ (the efficiencies are shares of its own probe, but
its products, attention and memory do not scale alike). Estimates for a mixture-of-experts model
count every expert's weights in each forward pass, so they are high by about the number of experts
over the number each token is routed to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..config import CalibConfig, PruneConfig
from ..model.speed import MachineSpeed, ModelFacts
from ..prune.methods import registry as methods

# the share of the probe's FLOP/s each kind of work reaches (see the module docstring)
# Decoding (bench/results/NOTES.md, stop 28; Zen 4, 2 threads, idle): a step reads every weight once
# whatever the batch, so the share grows with the batch, and falls as the cache the attention reads
# grows: DECODE_EFFICIENCY * batch / (batch + DECODE_HALF_BATCH) / (1 + context / DECODE_HALF_CONTEXT)
# (8 x 64 at batch 8: 0.13 of the probe; 32 x 128 at 32: 0.35; the app's default set, 79 x 512 at
# batch 80: 0.38)
DECODE_EFFICIENCY = 0.8
DECODE_HALF_BATCH = 40
DECODE_HALF_CONTEXT = 600
# a 16-bit decoding step on the CPU reaches a smaller share of its (higher) probe rate than a
# float32 one (8 x 64 and 32 x 128: 0.87 and 0.83 of float32's share; 80 x 256: 0.82)
DECODE_16BIT_CPU = 0.83
# perplexity and the filter: whole windows at once (8 WikiText-2 windows: 0.74 of the probe in
# float32; the whole test set, bench/ppl_speed.py: 0.70); 16-bit on a CPU: 0.8 of that share
FORWARD_EFFICIENCY = 0.72
FORWARD_16BIT_CPU = 0.8
# zero-shot: each choice counted as a forward over its context and itself at FORWARD_EFFICIENCY's
# old value; the scorer computes a context once for all its choices, so this over-counts (50 PIQA
# questions took 0.43x the estimate in float32, 0.59x in bf16): left high, not fitted on one task
ZEROSHOT_EFFICIENCY = 0.55
# Pruning (bench/results/NOTES.md, "The pruning estimate"; Zen 4, 2 threads, idle): a block's forward
# pass reaches EMAX * hidden / (hidden + HALF) of the probe (bench/block_forward.py: 0.80, 0.92,
# 0.88 in float32 and 0.66, 0.84, 0.92 in bf16 for hidden 576, 1536, 5120)
PRUNE_FORWARD_CURVE = {"float32": (0.92, 86.0), "16bit-cpu": (0.97, 274.0)}
# hooks, statistics and copies per pass, token and hidden unit, in float32-probe FLOPs (the demo's
# two-pass Wanda runs beside the curve above: 875 in float32, 1,500 in bf16)
PASS_FLOPS_PER_TOKEN_HIDDEN = 1_200.0
# one weight's masks, counts, previews and output error (Wanda 5,260 in float32 and 4,840 in bf16,
# magnitude 4,090 and 3,320 on the demo; Wanda on one 25,600 x 5,120 matrix about 4,100:
# bench/large_matrix.py)
MODULE_FLOPS_PER_WEIGHT = 5_000.0
# a disk-offloaded run writes each pruned block compactly (values plus a bit mask): about 9 ns a
# weight at 188 GFLOP/s (the 36-block Qwen3-32B-like run, bench/bigger_than_memory.py)
DISK_FLOPS_PER_WEIGHT = 1_750.0
# SparseGPT-like methods, of the float32 rate: the Hessians' accumulation (2 tokens in^2 for every
# module, though modules that share an input share one: counted that way it reaches 0.96-1.01), and
# the factorisations and column-by-column updates (in^3 + out in^2: 0.11-0.12)
HESSIAN_EFFICIENCY = 1.0
SOLVE_EFFICIENCY = 0.115
# the per-module work runs in float32: a 16-bit model's probe on a CPU with 16-bit instructions is
# about this many times its float32 rate (Zen 4 with avx512_bf16: 418-424 against 188-194 GFLOP/s)
CPU_16BIT_PROBE_RATIO = 2.2

# tokens of the named evaluation texts (GPT-2-like tokenizers; others differ by 10-20 %)
WIKITEXT2_TEST_TOKENS = 300_000  # the demo model's tokenizer: 304,986
BYTES_PER_TOKEN = 4.3  # a text file of English: bytes per token, roughly
# (questions, choices, tokens per choice with its context) of each zero-shot task's evaluated split
ZEROSHOT_SIZES: dict[str, tuple[int, int, int]] = {
    "arc_easy": (2376, 4, 45),
    "arc_challenge": (1172, 4, 50),
    "piqa": (1838, 2, 60),
    "hellaswag": (10042, 4, 110),
    "winogrande": (1267, 2, 30),
    "boolq": (3270, 2, 160),
    "openbookqa": (500, 4, 30),
}


@dataclass(frozen=True)
class Estimate:
    """Seconds a job is expected to take, and what the figure rests on."""

    seconds: float
    flops: float
    module_seconds: float = 0.0  # pruning: the part that is per-module work (included in ``seconds``)


def about(seconds: float) -> str:
    """A rough duration in words: "under a minute", "about 8 min", "about 2.5 h" + "on this machine"."""
    if not math.isfinite(seconds) or seconds < 0:
        return "time unknown"
    if seconds < 60:
        return "under a minute on this machine"
    minutes = seconds / 60
    if minutes < 90:
        return f"about {max(1, round(minutes))} min on this machine"
    return f"about {minutes / 60:.1f} h on this machine"


def _seconds(flops: float, speed: MachineSpeed, efficiency: float) -> float:
    return flops / max(speed.flops * efficiency, 1.0)


# The paper's protocol on the demo model (issue 17's grid, 64 x 512 sets of seeds 0 and 1, and
# bench/selfgen_paper.py): samples used per window, their mean length over ``seqlen``, and rows
# computed per token written once rows that end leave the batch (they wait until a quarter of the
# batch is done: 29,230 row-steps for 160 samples of about 180 tokens).
PAPER_SAMPLES_PER_WINDOW = 5.2  # 318 and 331 samples for 64 windows; 89 for 16
PAPER_MEAN_LENGTH = 0.35  # of seqlen: 175-187 tokens of 512 (median 113: most end early)
PAPER_ROWS_PER_TOKEN = 1.1


def selfgen_samples(cal: CalibConfig) -> int:
    """Samples self-generation writes for ``cal``: enough that ``nsamples`` remain after the filter
    (windows protocol), or, with the paper's protocol, about :data:`PAPER_SAMPLES_PER_WINDOW` per
    window (samples end at end-of-text, most well before ``seqlen``; a guess from the demo model)."""
    from .calibration import _n_before_filter

    if cal.protocol == "paper":
        return max(1, math.ceil(cal.nsamples * PAPER_SAMPLES_PER_WINDOW))
    if cal.drop_top == 0:
        return cal.nsamples
    return _n_before_filter(cal.nsamples, cal.drop_top)


def _sixteen_bit_cpu(dtype: str, device: str) -> bool:
    """bf16 or fp16 on the CPU: work that runs at a smaller share of its (higher) probe rate."""
    return device.startswith("cpu") and dtype in ("bfloat16", "float16")


def decode_efficiency(batch: float, dtype: str = "float32", device: str = "cpu", context: float = 0.0) -> float:
    """The share of the probe's rate a decoding step of ``batch`` sequences with ``context`` tokens
    cached reaches: a step reads every weight once whatever the batch, so the rate grows with the
    batch and levels off, and the attention's reading of the cache slows long samples down;
    16-bit decoding on a CPU reaches :data:`DECODE_16BIT_CPU` of the float32 share."""
    share = DECODE_EFFICIENCY * batch / (batch + DECODE_HALF_BATCH) / (1.0 + max(context, 0.0) / DECODE_HALF_CONTEXT)
    if _sixteen_bit_cpu(dtype, device):
        share *= DECODE_16BIT_CPU
    return share


def selfgen(facts: ModelFacts, speed: MachineSpeed, cal: CalibConfig, batch_size: int | None = None) -> Estimate:
    """Generating ``cal``'s self-generated set: every token decoded, in batches of at most
    ``batch_size`` (None: the generator's default) split as the generator splits them (as few as
    possible, sizes within one of each other); the perplexity that filters the samples comes
    from the same forward passes."""
    from ..calib.selfgen.settings import GenerationSettings

    n = selfgen_samples(cal)
    per_token = facts.forward_flops_per_token(cal.seqlen // 2)
    new_tokens = max(cal.seqlen - cal.prefix_tokens, 1)
    batch_size = batch_size or GenerationSettings.batch_size
    if cal.protocol == "paper":
        # every sample's own tokens, in batches that decode until their longest sample ends (about
        # seqlen steps) while rows leave as they end: the average rows of a step are the batch's
        # share of tokens written, and a step's rate is that of its rows (decode_efficiency)
        written = n * max(cal.seqlen * PAPER_MEAN_LENGTH - cal.prefix_tokens, 1.0)
        flops = written * PAPER_ROWS_PER_TOKEN * per_token
        rows = max(1.0, min(batch_size, n) * PAPER_MEAN_LENGTH * PAPER_ROWS_PER_TOKEN)
        eff = decode_efficiency(rows, facts.dtype, facts.device, cal.seqlen * PAPER_MEAN_LENGTH / 2)
        return Estimate(_seconds(flops, speed, eff), flops)
    nbatches = max(1, -(-n // batch_size))
    bounds = [n * k // nbatches for k in range(nbatches + 1)]
    seconds = flops = 0.0
    for b in (bounds[k + 1] - bounds[k] for k in range(nbatches)):
        f = b * new_tokens * per_token
        flops += f
        seconds += _seconds(f, speed, decode_efficiency(b, facts.dtype, facts.device, cal.seqlen / 2))
    return Estimate(seconds, flops)


def block_passes(cfg: PruneConfig) -> int:
    """Forward passes per block over the calibration tokens: 2 (statistics, then the pruned
    outputs), 1 in one pass, plus 1 for OWL's pre-pass; 0 for a method without statistics."""
    if not cfg.needs_calibration:
        return 0
    passes = 0 if methods.stats_needs(cfg) is None else (1 if cfg.passes_once else 2)
    return passes + (1 if cfg.owl else 0)


def _is_16bit_cpu(facts: ModelFacts) -> bool:
    return _sixteen_bit_cpu(facts.dtype, facts.device)


def prune_forward_efficiency(hidden: int, dtype: str = "float32", device: str = "cpu") -> float:
    """The share of the probe a block's forward pass reaches while pruning: small matrices (the
    demo's hidden 576) run further below the probe than large ones, 16-bit ones on a CPU more so."""
    key = "16bit-cpu" if _sixteen_bit_cpu(dtype, device) else "float32"
    top, half = PRUNE_FORWARD_CURVE[key]
    return top * hidden / (hidden + half)


def float32_flops(facts: ModelFacts, speed: MachineSpeed) -> float:
    """The float32 rate the per-module work runs at, from the probe of the model's dtype."""
    return speed.flops / CPU_16BIT_PROBE_RATIO if _is_16bit_cpu(facts) else speed.flops


def pruning(facts: ModelFacts, speed: MachineSpeed, cfg: PruneConfig, nsamples: int, seqlen: int) -> Estimate:
    """A pruning run on ``nsamples`` x ``seqlen`` calibration tokens (evaluations not included);
    ``module_seconds`` is the per-module part (masks, counts, previews, output errors, solves: what
    the ``ModulePruned`` events' seconds add up to)."""
    tokens = nsamples * seqlen if cfg.needs_calibration else 0
    passes = block_passes(cfg)
    fwd = passes * tokens * (facts.forward_flops_per_token(seqlen // 2, head=False))
    f32 = max(float32_flops(facts, speed), 1.0)
    seconds = _seconds(fwd, speed, prune_forward_efficiency(facts.hidden, facts.dtype, facts.device))
    seconds += passes * tokens * facts.num_blocks * facts.hidden * PASS_FLOPS_PER_TOKEN_HIDDEN / f32
    hessian = solve = 0.0
    if methods.builds_hessian(cfg):
        hessian = facts.num_blocks * sum(2.0 * tokens * i * i for _, i in facts.block_linears)
        solve = facts.num_blocks * sum(i ** 3 + o * i * i for o, i in facts.block_linears)
        seconds += hessian / (f32 * HESSIAN_EFFICIENCY)  # in the statistics hooks, during the passes
    if cfg.offload_mode == "disk":  # each pruned block written to the work folder, after its modules
        seconds += facts.block_params * DISK_FLOPS_PER_WEIGHT / f32
    module = solve / (f32 * SOLVE_EFFICIENCY) + facts.block_params * MODULE_FLOPS_PER_WEIGHT / f32
    return Estimate(seconds + module, fwd + hessian + solve, module)


def eval_tokens(source: str, seqlen: int, max_windows: int | None) -> int | None:
    """Tokens a perplexity evaluation reads: ``max_windows`` windows, or a guess at the whole text
    (WikiText-2's test split, C4's 256 windows, a local file by its size); None when unknown."""
    if max_windows:
        return max_windows * seqlen
    s = source.lower()
    if s == "c4":
        return 256 * seqlen
    if s == "wikitext2" or "wikitext-2" in s or "wiki.test" in s:
        if not Path(source).is_file():
            return WIKITEXT2_TEST_TOKENS
    path = Path(source)
    try:
        if path.is_file():
            size = path.stat().st_size
            if path.suffix == ".gz":
                size *= 3  # compressed text: about a third of its size
            return int(size / BYTES_PER_TOKEN)
    except OSError:
        return None
    return None


def perplexity(facts: ModelFacts, speed: MachineSpeed, tokens: int, seqlen: int) -> Estimate:
    """A perplexity evaluation over ``tokens`` tokens in ``seqlen`` windows."""
    flops = tokens * facts.forward_flops_per_token(seqlen // 2)
    eff = FORWARD_EFFICIENCY * (FORWARD_16BIT_CPU if _is_16bit_cpu(facts) else 1.0)
    return Estimate(_seconds(flops, speed, eff), flops)


def zeroshot(facts: ModelFacts, speed: MachineSpeed, tasks: list[str] | tuple[str, ...],
             limit: int | None) -> Estimate:
    """Zero-shot accuracy on ``tasks``, at most ``limit`` questions each: every choice of every
    question is one forward pass over its context and choice."""
    flops = 0.0
    for name in tasks:
        items, choices, length = ZEROSHOT_SIZES.get(name, (1000, 4, 60))
        if limit:
            items = min(items, limit)
        flops += items * choices * length * facts.forward_flops_per_token(length // 2)
    return Estimate(_seconds(flops, speed, ZEROSHOT_EFFICIENCY), flops)


def fmt_duration(seconds: float) -> str:
    """"42 s", "3:05 min", "1:02:03 h"."""
    s = max(0.0, seconds) if math.isfinite(seconds) else 0.0
    if s < 60:
        return f"{s:.0f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}:{sec:02d} min"
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d} h"


def eta_seconds(done: float, total: float, elapsed: float) -> float | None:
    """Seconds left at the rate measured so far (None before any progress or once done)."""
    if total <= 0 or done <= 0 or done >= total or elapsed <= 0:
        return None
    return elapsed / done * (total - done)


def progress_text(done: float, total: float, elapsed: float) -> str:
    """"elapsed 1:02 min, about 3:10 min left": a running phase's time, from its measured rate."""
    text = f"elapsed {fmt_duration(elapsed)}"
    left = eta_seconds(done, total, elapsed)
    if left is not None:
        text += f", about {fmt_duration(left)} left"
    return text


class PhaseClock:
    """Each phase's start time, and its elapsed time and ETA when it reports progress. Times are
    passed in (``now``: :func:`time.perf_counter` in use), so that the arithmetic is testable."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}

    def start(self, phase: str, now: float) -> None:
        self._started[phase] = now

    def text(self, phase: str, share: float, now: float) -> str:
        """The phase's elapsed time and ETA, ``share`` (0..1) of it being done; a phase not
        started before counts from now."""
        t0 = self._started.setdefault(phase, now)
        return progress_text(share, 1.0, now - t0)
