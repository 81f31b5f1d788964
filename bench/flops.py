"""How close a pruning run comes to the machine's matrix-multiply rate.

    python bench/flops.py [--dtype fp32,bf16] [--method wanda,sparsegpt] [--nsamples 64] [--seqlen 512]

The floating-point work of a run is counted while it runs (hooks, no estimate of what "should"
run): every linear module call inside the decoder blocks (2 * tokens * in * out; the statistics
pass stops after the block's last module, so it is not counted there), causal attention
(2 * batch * heads * L^2 * head_dim: the useful half of QK^T and AV), the statistics
(SparseGPT's Hessian, 2 * tokens * in^2 per distinct module input; the squared norms), and
SparseGPT's own algebra (Cholesky, inverse and upper Cholesky, 4/3 n^3 per distinct module
input; the in-block OBS updates, 2 * rows * (B - i) per column, rank-1 inside 16-column sub-blocks
and products between them; the lazy block updates, 2 * rows * B * rest). Wanda's
scoring and top-k are elementwise and not counted. The embedding lookup in the capture is free.

The count divided by the run's wall time is printed beside a ``torch.mm`` probe of the same dtype
(square 2048 matrices, best of several) and the ratio. On a machine that other processes load,
wall time mixes in how much of the cores the run was given, so the same ratio is also printed
per CPU-second (work / process CPU time, for the run and for the probe alike). The model is the demo model, loaded in
the dtype measured; statistics are float32 in both cases. Results go to bench/results/flops.json.

On a CPU without bfloat16 instructions (no AVX512-BF16 or AMX: e.g. AMD Zen 3) bf16 is emulated:
a 2048-square bf16 product took a minute there, so the probe alone would run for a quarter of an
hour. bf16 is then skipped with the reason (``core.devices.slow_dtype_warning``), unless
``--emulated`` asks for it anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def mm_rate(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> tuple[float, float]:
    """(best wall-clock rate, rate per CPU-second) of an n x n x n matrix product."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    cpu = 0.0
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(3):
            a @ b
        best = min(best, (time.perf_counter() - t) / 3)
        cpu += time.process_time() - c
    return 2 * n ** 3 / best, 2 * n ** 3 * 3 * repeats / cpu


class Counter:
    def __init__(self) -> None:
        self.parts: dict[str, float] = {}

    def add(self, key: str, flops: float) -> None:
        self.parts[key] = self.parts.get(key, 0.0) + float(flops)

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def instrument(model, counter: Counter) -> list:
    """Forward hooks on every linear and attention module of the blocks."""
    from prunestudio.core.model import architecture

    lay = architecture.layout(model)
    cfg = model.config
    heads = getattr(cfg, "num_attention_heads", None)
    head_dim = getattr(cfg, "head_dim", None) or (cfg.hidden_size // heads)
    handles = []
    for block in lay.blocks:
        for name, mod in block.named_modules():
            if architecture.is_prunable(mod):
                out_f, in_f = architecture.get_weight_2d(mod).shape

                def hook(m, args, out, in_f=in_f, out_f=out_f):
                    tokens = args[0].numel() // args[0].shape[-1]
                    counter.add("forward linear", 2 * tokens * in_f * out_f)

                handles.append(mod.register_forward_hook(hook))
            elif name.endswith(("self_attn", "attn", "attention")) and not any(
                    architecture.is_prunable(c) for c in [mod]):
                def ahook(m, args, kwargs, out):
                    x = args[0] if args else kwargs.get("hidden_states")
                    b, L = x.shape[0], x.shape[1]
                    counter.add("forward attention", 2 * b * heads * L * L * head_dim)

                handles.append(mod.register_forward_hook(ahook, with_kwargs=True))
    return handles


def patch_algebra(counter: Counter):
    from prunestudio.core.prune import stats as stats_mod
    from prunestudio.core.prune.methods import sparsegpt as sg

    orig_add = stats_mod.InputStats.add
    orig_prune = sg.sparsegpt_prune
    orig_factor = sg.hessian_factor

    def add(self, x):
        n = x.numel() // x.shape[-1]
        d = self.in_features
        if self.hessian is not None:
            counter.add("hessian", 2 * n * d * d)
        if self.sq_norm is not None:
            counter.add("statistics (norms)", 2 * n * d)
        return orig_add(self, x)

    def prune(weight, hessian, sparsity, n=0, m=0, blocksize=128, percdamp=0.01, **kw):
        rows, cols = weight.shape
        bs = max(m, (blocksize // m) * m) if n and m else blocksize
        inner = lazy = 0
        for c0 in range(0, cols, bs):
            c1 = min(c0 + bs, cols)
            count = c1 - c0
            inner += rows * count * (count + 1)
            lazy += 2 * rows * count * (cols - c1)
        counter.add("sparsegpt column updates", inner)
        counter.add("sparsegpt lazy updates", lazy)
        return orig_prune(weight, hessian, sparsity, n=n, m=m, blocksize=blocksize, percdamp=percdamp, **kw)

    def factor(hessian, *a, **kw):  # once per distinct module input (q/k/v share one)
        counter.add("sparsegpt factorisation", 4 / 3 * hessian.shape[0] ** 3)
        return orig_factor(hessian, *a, **kw)

    stats_mod.InputStats.add = add
    sg.sparsegpt_prune = prune
    sg.hessian_factor = factor

    def undo():
        stats_mod.InputStats.add = orig_add
        sg.sparsegpt_prune = orig_prune
        sg.hessian_factor = orig_factor

    return undo


def calibration(tokenizer, nsamples: int, seqlen: int) -> torch.Tensor:
    work = HERE / ".work" / f"calib_{nsamples}x{seqlen}.json"
    if work.exists():
        return torch.tensor(json.loads(work.read_text())["input_ids"], dtype=torch.long)
    from prunestudio.core.calib.sampling import sample_calibration

    c4 = HERE.parent.parent / "shared" / "data" / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl.gz"
    return sample_calibration(tokenizer, str(c4), nsamples, seqlen, seed=0).input_ids()


def run_one(method: str, dtype: str, nsamples: int, seqlen: int, batch_size: int) -> dict:
    from prunestudio.core.config import PruneConfig
    from prunestudio.core.events import run_to_completion
    from prunestudio.core.model.loading import load_model
    from prunestudio.core.prune.pipeline import iter_prune

    loaded = load_model("demo", "cpu", dtype)
    ids = calibration(loaded.tokenizer, nsamples, seqlen)
    counter = Counter()
    handles = instrument(loaded.model, counter)
    undo = patch_algebra(counter)
    try:
        cfg = PruneConfig(method=method, sparsity=0.5, batch_size=batch_size)
        t0, c0 = time.perf_counter(), time.process_time()
        res = run_to_completion(iter_prune(loaded.model, ids, cfg, "cpu", previews=False))
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    finally:
        undo()
        for h in handles:
            h.remove()
    return {"method": method, "dtype": dtype, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "flops": counter.total, "parts": counter.parts, "rate": counter.total / seconds,
            "rate_per_cpu_second": counter.total / cpu_seconds, "phases": res.seconds}


def cpu_model() -> str:
    """The CPU's model name (Linux), for telling apart figures taken on different machines."""
    try:
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        if "model name" in fields:  # virtual machines often say only "AMD EPYC": family and model too
            return f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="fp32,bf16")
    ap.add_argument("--method", default="wanda,sparsegpt")
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--emulated", action="store_true",
                    help="measure bf16 even on a CPU that emulates it (slow: minutes for the probe alone)")
    ap.add_argument("--results", default=str(HERE / "results" / "flops.json"))
    a = ap.parse_args()
    from prunestudio.core.model.devices import slow_dtype_warning

    os.environ.setdefault("PRUNESTUDIO_CACHE", "/tmp/pscache")
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    skipped: dict[str, str] = {}
    for dtype in a.dtype.split(","):
        tdt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        why = slow_dtype_warning(torch.device("cpu"), tdt)
        if why and not a.emulated:
            skipped[dtype] = why
            print(f"{dtype}: skipped. {why} (--emulated measures it anyway.)", flush=True)
            continue
        probe_before = mm_rate(tdt)
        for method in a.method.split(","):
            r = run_one(method, dtype, a.nsamples, a.seqlen, a.batch_size)
            probe_after = mm_rate(tdt)
            r["probe"] = max(probe_before[0], probe_after[0])
            r["probe_per_cpu_second"] = max(probe_before[1], probe_after[1])
            r["fraction_of_probe"] = r["rate"] / r["probe"]
            r["fraction_of_probe_cpu_time"] = r["rate_per_cpu_second"] / r["probe_per_cpu_second"]
            r["loadavg"] = os.getloadavg()[0]
            rows.append(r)
            print(f"{method:10s} {dtype}: {r['flops'] / 1e12:7.3f} TFLOP in {r['seconds']:7.1f} s = "
                  f"{r['rate'] / 1e9:7.1f} GFLOP/s; torch.mm probe {r['probe'] / 1e9:7.1f} GFLOP/s; "
                  f"ratio {r['fraction_of_probe']:.2f}  (load avg {r['loadavg']:.1f})", flush=True)
            print(f"    per CPU-second: run {r['rate_per_cpu_second'] / 1e9:.1f} GFLOP, probe "
                  f"{r['probe_per_cpu_second'] / 1e9:.1f} GFLOP: ratio {r['fraction_of_probe_cpu_time']:.2f}")
            for k, v in sorted(r["parts"].items(), key=lambda kv: -kv[1]):
                print(f"    {k:28s} {v / 1e12:8.4f} TFLOP")
            probe_before = probe_after
    out = {"nsamples": a.nsamples, "seqlen": a.seqlen, "batch_size": a.batch_size,
           "threads": torch.get_num_threads(), "cpu": cpu_model(), "runs": rows, "skipped": skipped}
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({f"{r['method']}_{r['dtype']}": {"fraction_wall": round(r["fraction_of_probe"], 3),
                                                       "fraction_cpu_time": round(r["fraction_of_probe_cpu_time"], 3)}
                      for r in rows}))


if __name__ == "__main__":
    main()
