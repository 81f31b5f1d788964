"""Peak host memory of a pruning run, against the weights plus the calibration activations, and
against Prune Studio's estimate (``core/prune/memory.py``).

    python bench/memory.py [--nsamples 64] [--seqlen 512] [--configs wanda:cpu,sparsegpt:cpu,wanda:disk]

Each configuration runs in a fresh process on the demo model (float32, CPU). A psutil thread
samples the process's resident set size every 5 ms. ``base`` is the RSS once Python, torch,
transformers and Prune Studio are imported (before the model is read); ``peak`` is the highest
RSS seen until the pruned model is in memory. Reported:

* ``peak - base`` against ``weights + activations`` (the model's parameter bytes as loaded,
  resident ones only with disk offload, plus ``nsamples * seqlen * hidden * dtype bytes``):
  the target is at most 1.5x;
* ``peak - base`` against ``estimate_run_memory(...)["host"]``: the target is within 20%.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from vs_llmcompressor import add_order_flags, order_flags, write_calibration  # noqa: E402


def worker(a: argparse.Namespace) -> dict:
    import psutil
    import torch
    from prunestudio.core.config import PruneConfig
    from prunestudio.core.events import run_to_completion
    from prunestudio.core.model import architecture
    from prunestudio.core.model.loading import load_model
    from prunestudio.core.model.offload import store_of
    from prunestudio.core.prune.memory import estimate_run_memory, module_shapes
    from prunestudio.core.prune.pipeline import iter_prune

    proc = psutil.Process()
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    ids = torch.tensor(json.loads(Path(a.calib).read_text())["input_ids"], dtype=torch.long)[: a.nsamples, : a.seqlen]
    import gc

    gc.collect()
    base = proc.memory_info().rss
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    loaded = load_model("demo", "cpu", a.dtype, offload=a.offload)
    rss_loaded = proc.memory_info().rss
    cfg = PruneConfig(method=a.method, sparsity=0.5, batch_size=a.batch_size,
                      one_pass=a.one_pass).with_offload_mode(a.offload)
    run_to_completion(iter_prune(loaded.model, ids, cfg, "cpu", previews=True))
    seconds = time.perf_counter() - t0
    stop.set()
    th.join()
    peak_rss = max(peak[0], proc.memory_info().rss)

    info = dict(loaded.info)
    info["module_shapes"] = module_shapes(loaded.model)
    nbytes = torch.finfo(loaded.dtype).bits // 8
    est = estimate_run_memory(info, a.nsamples, a.seqlen, a.method, nbytes, a.batch_size, offload=a.offload,
                              one_pass=cfg.passes_once)
    params = info["parameters"]
    resident = params * nbytes
    store = store_of(loaded.model)
    if store is not None:
        lay = architecture.layout(loaded.model)
        resident -= sum(p.numel() for p in lay.blocks.parameters()) * nbytes
    activations = a.nsamples * a.seqlen * info["hidden_size"] * nbytes
    used = peak_rss - base
    return {"method": a.method, "offload": a.offload, "one_pass": cfg.passes_once, "dtype": a.dtype,
            "nsamples": a.nsamples,
            "seqlen": a.seqlen, "batch_size": a.batch_size, "seconds": seconds,
            "base_rss": base, "rss_after_load": rss_loaded, "peak_rss": peak_rss, "used": used,
            "weights_resident": resident, "weights_total": params * nbytes, "activations": activations,
            "ratio_to_weights_plus_activations": used / (resident + activations),
            "estimate": est, "estimate_ratio": est["host"] / used}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--method", default="wanda")
    ap.add_argument("--offload", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--calib", default=None)
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    add_order_flags(ap)
    ap.add_argument("--configs", default="wanda:cpu,sparsegpt:cpu,wanda:disk,sparsegpt:disk")
    ap.add_argument("--results", default=str(HERE / "results" / "memory.json"))
    a = ap.parse_args()
    os.environ.setdefault("PRUNESTUDIO_CACHE", "/tmp/pscache")
    if a.worker:
        print(json.dumps(worker(a)))
        return
    from prunestudio.core.model.demo import ensure_demo_model

    calib = write_calibration(str(ensure_demo_model()), a.nsamples, a.seqlen)
    rows = []
    for spec in a.configs.split(","):
        method, offload = spec.split(":")
        cmd = [sys.executable, __file__, "--worker", "--method", method, "--offload", offload,
               "--dtype", a.dtype, "--calib", str(calib), "--nsamples", str(a.nsamples),
               "--seqlen", str(a.seqlen), "--batch-size", str(a.batch_size)] + order_flags(a.one_pass)
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            print(f"{spec}: failed\n{p.stderr[-3000:]}")
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        rows.append(r)
        Path(a.results).parent.mkdir(parents=True, exist_ok=True)  # written after each run
        Path(a.results).write_text(json.dumps({"runs": rows}, indent=2) + "\n")
        mb = 2 ** 20
        print(f"{method:10s} offload {offload:5s} {'one' if r['one_pass'] else 'two'}-pass: peak - base {r['used'] / mb:7.1f} MiB "
              f"(base {r['base_rss'] / mb:.0f} MiB); weights {r['weights_resident'] / mb:.1f} + activations "
              f"{r['activations'] / mb:.1f} MiB -> ratio {r['ratio_to_weights_plus_activations']:.2f}; "
              f"estimate {r['estimate']['host'] / mb:.1f} MiB = {r['estimate_ratio']:.2f} x measured", flush=True)
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results).write_text(json.dumps({"runs": rows}, indent=2) + "\n")
    print(json.dumps({f"{r['method']}_{r['offload']}": {"ratio": round(r["ratio_to_weights_plus_activations"], 3),
                                                        "estimate_ratio": round(r["estimate_ratio"], 3)}
                      for r in rows}))


if __name__ == "__main__":
    main()
