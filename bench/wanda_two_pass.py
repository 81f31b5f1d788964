"""Where a two-pass Wanda run's time goes, and what was tried to shorten it (issue 20, target 5).

    python bench/wanda_two_pass.py [--dtypes float32,bfloat16] [--nsamples 16] [--seqlen 512]

On the demo model, in one process:

1. a two-pass Wanda run under ``torch.profiler``, its operators' self time grouped: matrix products,
   the attention kernel, the model's element-wise work (RMSNorm, rotary embedding, SiLU, residual
   adds), dtype conversions, and Prune Studio's own (Wanda's per-row ``topk``, the masks, the
   statistics, the previews);
2. ``torch.compile`` of one decoder block against eager mode: the first call's compile time, the
   time of a forward pass after it, the largest difference in the block's output, and how many
   forward passes would repay the compile beside how many a run makes;
3. Wanda's per-row mask from ``kthvalue`` plus an exact tie rule against ``topk`` (the same mask).

Prints one JSON line per part and a JSON object with all of them last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

GROUPS = {
    "products": ("aten::mm", "aten::addmm", "aten::bmm"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math"),
    "model elementwise": ("aten::mul", "aten::add", "aten::silu", "aten::pow", "aten::rsqrt", "aten::mean",
                          "aten::cat", "aten::neg", "aten::add_", "aten::mul_"),
    "conversions and copies": ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::index_select"),
    "ours: masks, statistics, previews": ("aten::topk", "aten::masked_fill_", "aten::scatter_", "aten::abs",
                                          "aten::addcmul_", "aten::sum", "aten::_adaptive_avg_pool2d",
                                          "aten::sqrt", "aten::div"),
}


def profile_run(dtype: str, ids: torch.Tensor) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from prunestudio.core.config import PruneConfig
    from prunestudio.core.events import run_to_completion
    from prunestudio.core.model.loading import load_model
    from prunestudio.core.prune.pipeline import iter_prune

    model = load_model("demo", "cpu", dtype).model
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_to_completion(iter_prune(model, ids, PruneConfig(method="wanda", sparsity=0.5)))
    wall = time.perf_counter() - t
    by_op = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    total = sum(by_op.values())
    shares = {g: sum(by_op.get(k, 0.0) for k in keys) / total for g, keys in GROUPS.items()}
    shares["other"] = 1.0 - sum(shares.values())
    return {"part": "profile", "dtype": dtype, "wall_s": round(wall, 2), "op_cpu_s": round(total, 2),
            "shares": {k: round(v, 3) for k, v in shares.items()}}


def compile_block(dtype: str, batch: int, seqlen: int, blocks_per_run: int, batches_per_run: int) -> dict:
    from prunestudio.core.model import architecture
    from prunestudio.core.model.loading import load_model
    from prunestudio.core.prune.capture import capture_first_block_inputs

    model = load_model("demo", "cpu", dtype).model
    lay = architecture.layout(model)
    layers = lay.blocks
    ids = torch.randint(0, 40000, (batch, seqlen), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        inputs, _ = capture_first_block_inputs(model, lay.path, layers[0], ids, batch, torch.device("cpu"))
        x, args, kw = inputs.hidden[0], inputs.args[0], inputs.kwargs[0]

        def first(out):
            return out[0] if isinstance(out, tuple) else out

        def timed(fn, block, n=3):
            best = float("inf")
            for _ in range(n):
                t = time.perf_counter()
                fn(block, x)
                best = min(best, time.perf_counter() - t)
            return best

        def eager(b, h):
            return b(h, *args, **kw)

        eager(layers[0], x)
        t_eager = timed(eager, layers[0])
        ref = first(eager(layers[0], x))
        compiled = torch.compile(lambda b, h: b(h, *args, **kw), dynamic=False)
        t = time.perf_counter()
        out = first(compiled(layers[0], x))
        t_compile = time.perf_counter() - t
        t_comp = timed(compiled, layers[0])
        t_other = timed(compiled, layers[1], 1)  # another block of the same kind: no recompilation
    saved = t_eager - t_comp
    # a two-pass run: every block twice per batch (the statistics pass stops early: an upper bound)
    forwards = 2 * blocks_per_run * batches_per_run
    return {"part": "torch.compile", "dtype": dtype, "block_input": [batch, seqlen],
            "eager_s": round(t_eager, 4), "compiled_s": round(t_comp, 4), "other_block_first_call_s": round(t_other, 4),
            "compile_s": round(t_compile, 2), "compiled_over_eager": round(t_comp / t_eager, 3),
            "max_abs_diff": float((out.float() - ref.float()).abs().max()), "same_output": bool(torch.equal(out, ref)),
            "forwards_to_repay": round(t_compile / saved) if saved > 0 else None, "forwards_per_run": forwards,
            "saved_per_run_s": round(saved * forwards, 2)}


def kth_mask(s: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` lowest scores of each row: below the k-th value, then ties at it by position."""
    t = torch.kthvalue(s, k, dim=-1, keepdim=True).values
    m = s < t
    eq = s == t
    return m | (eq & (torch.cumsum(eq, -1) <= k - m.sum(-1, keepdim=True)))


def masks() -> dict:
    from prunestudio.core.prune.methods.masks import per_row_mask

    g = torch.Generator().manual_seed(0)
    rows = []
    for shape in ((576, 576), (192, 576), (1536, 576), (576, 1536)):
        s = torch.rand(shape, generator=g)
        k = shape[1] // 2
        same = torch.equal(per_row_mask(s, 0.5), kth_mask(s, k))
        tt = {}
        for name, fn in (("topk", lambda: per_row_mask(s, 0.5)), ("kthvalue", lambda: kth_mask(s, k))):
            fn()
            t = time.perf_counter()
            for _ in range(20):
                fn()
            tt[name] = (time.perf_counter() - t) / 20
        rows.append({"shape": list(shape), "topk_ms": round(tt["topk"] * 1e3, 3),
                     "kthvalue_ms": round(tt["kthvalue"] * 1e3, 3), "same_mask": same})
    return {"part": "masks", "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0))))
    ap.add_argument("--out", default=str(HERE / "results" / "wanda_two_pass.json"))
    a = ap.parse_args()
    os.environ.setdefault("PRUNESTUDIO_CACHE", "/tmp/pscache")
    torch.set_num_threads(a.threads)
    sys.path.insert(0, str(HERE))
    from prunestudio.core.config import PruneConfig
    from prunestudio.core.model.demo import ensure_demo_model
    from prunestudio.core.model.speed import cpu_model
    from vs_llmcompressor import write_calibration

    calib = write_calibration(str(ensure_demo_model()), a.nsamples, a.seqlen)
    ids = torch.tensor(json.loads(Path(calib).read_text())["input_ids"], dtype=torch.long)
    batch = PruneConfig().batch_size
    parts = []
    for dtype in a.dtypes.split(","):
        for part in (profile_run(dtype, ids),
                     compile_block(dtype, batch, a.seqlen, 30, -(-a.nsamples // batch))):
            print(json.dumps(part), flush=True)
            parts.append(part)
    part = masks()
    print(json.dumps(part), flush=True)
    parts.append(part)
    out = {"cpu": cpu_model(), "threads": a.threads, "load_at_end": os.getloadavg(), "parts": parts}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
