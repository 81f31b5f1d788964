"""One large matrix pruned the way a block's module is, with one CPU thread and with all of them,
and its compact storage for disk offload (the per-module work that dominated a block of a
32B-parameter shape in ``bench/bigger_than_memory.py``).

    python bench/large_matrix.py [--out 25600] [--in 5120] [--tokens 2048] [--dtype bf16] [--repeats 3]
        [--methods wanda,magnitude] [--out-json PATH]

A ``Linear(in, out)`` with weights ~ N(0, 0.02) and input statistics from ``tokens`` rows of
N(0, 1) activations, pruned to 50% by ``core/prune/block._prune_one`` (the method, the exact
zeros written back in the module's dtype, the output error on the kept sample rows): once with
the pipeline's rule (``core/model/devices.threads_for_matrix``: every thread for a matrix of
``LARGE_MATRIX`` elements or more) and once forced to one thread (the rule before), taking
turns ``--repeats`` times from the same dense weight; the masks must be equal. Then the pruned
matrix written and read back as a disk-offloaded block is (``core/model/compact.write_compact`` and
``read_compact``, with the safetensors file in a temporary folder): seconds each way, bytes
against the dense matrix, bit-equal round trip.

The last line printed is one JSON object (also written to ``--out-json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from moe_prune import cpu_name  # noqa: E402


def main() -> None:
    import torch
    from prunestudio.core.config import PruneConfig
    from prunestudio.core.model import compact, devices
    from prunestudio.core.prune import block as block_mod
    from prunestudio.core.prune.methods import registry
    from prunestudio.core.prune.stats import InputStats
    from safetensors.torch import save_file

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=int, default=25600)
    p.add_argument("--in", dest="inp", type=int, default=5120)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", default="wanda,magnitude")
    p.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0))))
    p.add_argument("--out-json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    g = torch.Generator().manual_seed(0)
    dense = (torch.randn(a.out, a.inp, generator=g) * 0.02).to(dtype)
    x = torch.randn(a.tokens, a.inp, generator=g).to(dtype)
    mod = torch.nn.Linear(a.inp, a.out, bias=False, dtype=dtype)
    rows: dict[str, dict] = {}
    for method in a.methods.split(","):
        cfg = PruneConfig(method=method, sparsity=0.5)
        needs = registry.stats_needs(cfg)
        st = None
        if needs is not None:
            st = InputStats(a.inp, needs, "cpu")
            for k in range(0, a.tokens, 512):
                st.add(x[k:k + 512])
        times: dict[str, list[float]] = {"rule": [], "one_thread": []}
        masks: dict[str, torch.Tensor] = {}
        real_rule = block_mod.threads_for_matrix
        for _ in range(a.repeats):
            for side in ("one_thread", "rule"):
                with torch.no_grad():
                    mod.weight.copy_(dense)
                block_mod.threads_for_matrix = (real_rule if side == "rule"
                                                else lambda t: devices.one_cpu_thread(t.device))
                try:
                    t0 = time.perf_counter()
                    outcome = block_mod._prune_one(mod, st, 0.5, cfg, 0, 0, 512, "mlp.gate_proj", True)
                    times[side].append(time.perf_counter() - t0)
                finally:
                    block_mod.threads_for_matrix = real_rule
                masks[side] = outcome.mask.clone()
        same = bool(torch.equal(masks["rule"], masks["one_thread"]))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows[method] = {"seconds_rule": med["rule"], "seconds_one_thread": med["one_thread"],
                        "all_seconds": times, "ratio_rule_over_one_thread": med["rule"] / med["one_thread"],
                        "same_mask": same}
        print(json.dumps({method: rows[method]}), flush=True)

    pruned = mod.weight.detach().clone()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "block.safetensors"
        t0 = time.perf_counter()
        compact.write_compact(path, {"w": pruned})
        write_s = time.perf_counter() - t0
        size = path.stat().st_size
        t0 = time.perf_counter()
        back = compact.read_compact(path, ["w"])["w"]
        read_s = time.perf_counter() - t0
        dense_path = Path(tmp) / "dense.safetensors"
        t0 = time.perf_counter()
        save_file({"w": pruned}, str(dense_path))
        dense_write_s = time.perf_counter() - t0
    out = {"cpu": cpu_name(), "threads": a.threads, "load_average": os.getloadavg(), "shape": [a.out, a.inp],
           "dtype": a.dtype, "tokens": a.tokens, "large_matrix_elements": devices.LARGE_MATRIX, "methods": rows,
           "compact": {"write_s": write_s, "read_s": read_s, "dense_write_s": dense_write_s,
                       "bytes": size, "over_dense": size / (pruned.numel() * pruned.element_size()),
                       "bit_equal": bool(torch.equal(back.view(-1).view(torch.uint8),
                                                     pruned.view(-1).view(torch.uint8)))}}
    if a.out_json:
        Path(a.out_json).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
