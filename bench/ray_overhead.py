"""What running a grid's cells as Ray tasks costs against the local executor, on this machine.

    OMP_NUM_THREADS=1 python bench/ray_overhead.py [--cells 4] [--out bench/results/ray_overhead.json]

Run it with ``OMP_NUM_THREADS=1``: Ray sets that in its workers, and without it the local run's
cells were 2-5x slower on a busy 2-core machine (torch on one thread either way), which is not
Ray's doing.

The same grid (the default model; Wanda and magnitude at 50% and 60%...; 8 x 64 calibration tokens
cut from README.md, 2 windows of 64 tokens of ARCHITECTURE.md) runs twice into fresh folders: with
the local executor, then with a local Ray of ONE CPU (one cell at a time, one torch thread, as the
local run), so the difference is Ray's own cost: a worker process to start, the model to load in
it, the calibration set to build in a task and hand over, results to send back. Ray's start is
timed apart. Prints and writes the timings. On a shared machine the cells' own times swing with
the load, so the overhead is taken outside them: overhead per cell = ((Ray wall - its cells' time)
- (local wall - its cells' time)) / cells (the cells' time: ``seconds`` of each row, the cell's
work without the model's load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=4, help="pruned cells (methods x sparsities)")
    ap.add_argument("--out", default=None, help="write the timings here (JSON)")
    a = ap.parse_args()

    from prunestudio.core.experiment import GridSpec, run_experiment
    from prunestudio.core.experiment.ray_executor import RayExecutor
    from prunestudio.core.model.threads import set_requested
    from prunestudio.core.run.history import History

    sparsities = [0.5, 0.6, 0.7, 0.4, 0.3, 0.8][: max(1, (a.cells + 1) // 2)]
    grid = {"name": "ray-overhead", "model": "demo", "sources": [str(REPO / "README.md")],
            "methods": ["wanda", "magnitude"], "sparsities": sparsities, "seeds": [0], "dense_baseline": False,
            "calibration": {"nsamples": 8, "seqlen": 64},
            "eval": {"ppl": [str(REPO / "ARCHITECTURE.md")], "seqlen": 64, "max_windows": 2},
            "device": "cpu", "dtype": "fp32"}
    spec = GridSpec.from_dict(grid, REPO)
    n = len(spec.cells())
    set_requested(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        local = run_experiment(spec, Path(tmp) / "local")
        local_s = time.perf_counter() - t0
        local_cells = [r.seconds for r in History(local.db_path).runs()]

        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        remote = run_experiment(spec, Path(tmp) / "ray", executor=RayExecutor(cpus_per_cell=1))
        ray_s = time.perf_counter() - t0
        ray_cells = [r.seconds for r in History(remote.db_path).runs()]
        t0 = time.perf_counter()
        ray.shutdown()
        shutdown_s = time.perf_counter() - t0
        same = ({r.key: r.report["ppl"] for r in History(local.db_path).runs()}
                == {r.key: r.report["ppl"] for r in History(remote.db_path).runs()})
    out = {"cpu": cpu_name(), "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0], "cells": n,
           "local_wall_s": round(local_s, 2), "ray_init_s": round(init_s, 2), "ray_wall_s": round(ray_s, 2),
           "ray_shutdown_s": round(shutdown_s, 2),
           # the time outside the cells' own work (load, worker start, hand-over, writes), per cell: the
           # walls alone mostly measure how busy the shared machine was during each run
           "outside_cells_per_cell_local_s": round((local_s - sum(local_cells)) / n, 2),
           "outside_cells_per_cell_ray_s": round((ray_s - sum(ray_cells)) / n, 2),
           "overhead_per_cell_s": round(((ray_s - sum(ray_cells)) - (local_s - sum(local_cells))) / n, 2),
           "cell_seconds_local": [round(x, 2) for x in local_cells],
           "cell_seconds_ray": [round(x, 2) for x in ray_cells],
           "same_perplexities": same, "python": sys.version.split()[0],
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    print(json.dumps(out, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
