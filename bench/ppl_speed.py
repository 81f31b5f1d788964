"""Perplexity speed: the chunked output head against the model's whole logits and the machine's limit.

    PRUNESTUDIO_EVAL_DATA=../shared/data python bench/ppl_speed.py [--dtypes fp32,bf16]
        [--max-windows N] [--seqlen 512] [--batch-size 4] [--probe-every 10] [--out FILE]

On the demo model (SmolLM2-135M-Instruct, CPU), over the WikiText-2 test set (the project's suite
``wikitext2``, all of it unless ``--max-windows``), in one process and per dtype:

* the probe: ``F.linear`` products of the model's own shapes (every linear layer of a block and the
  output head, on ``batch x seqlen`` rows) in the model's dtype, their FLOPs over their time:
  what this CPU does at best with these matrices. It runs before the first batch and every
  ``--probe-every`` batches, so it sees the same load as the evaluation; the mean is the limit;
* ``full``: the path before the change (``NllScorer(model, "full")``: the model's whole
  ``[batch, seqlen, vocab]`` logits, then the cross entropy), and ``chunked``, the product's path
  (``NllScorer(model)``), taking turns batch by batch on the same windows (``--old-every K``: the
  old path on every K-th batch only, ``rel_diff`` then on those windows);
* each path's tokens/s and its fraction of the probe: tokens/s x ``model_facts(model)
  .forward_flops_per_token(seqlen // 2)`` (the FLOPs the time estimates count: the blocks' linear
  layers, causal attention, the head) / the probe's FLOP/s;
* where the chunked path's time goes, on a few batches timed part by part: the trunk (the model's
  forward with the head on one position per window), the head's products, the cross entropy.

bf16 on a CPU without bf16 instructions (AVX512-BF16, AMX: Zen 1-3 have none) is emulated and
slow; it runs anyway, and the JSON says so (``bf16_emulated``). The last line is one JSON object
(the first dtype's figures at the top level, every dtype under ``runs``); it is also written to
``--out`` (default bench/results/ppl_speed.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DATA = os.environ.get("PRUNESTUDIO_EVAL_DATA") or str(HERE.parent.parent / "shared" / "data")


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def shapes_probe(facts, rows: int, dtype: torch.dtype, repeats: int = 2) -> float:
    """FLOP/s of ``F.linear`` over ``rows`` rows for every linear shape of one block and the head."""
    g = torch.Generator().manual_seed(0)
    shapes = list(facts.block_linears) + [(facts.vocab, facts.hidden)]
    mats = [(torch.randn(rows, i, generator=g).to(dtype), torch.randn(o, i, generator=g).to(dtype) * 0.05)
            for o, i in shapes]
    flops = sum(2.0 * rows * o * i for o, i in shapes)
    best = math.inf
    with torch.inference_mode():
        for x, w in mats[:2]:
            torch.nn.functional.linear(x, w)  # warm up
        for _ in range(repeats):
            t = time.perf_counter()
            for x, w in mats:
                torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - t)
    return flops / best


def parts(model, scorer_mod, batch: torch.Tensor) -> dict[str, float]:
    """Seconds of the chunked path's parts on one batch: trunk, head products, cross entropy."""
    head = model.get_output_embeddings()
    kept: list[torch.Tensor] = []

    def keep(m, args):
        kept.append(args[0])
        return (args[0][:, -1:],)

    h = head.register_forward_pre_hook(keep)
    try:
        t = time.perf_counter()
        model(input_ids=batch, use_cache=False)
        trunk = time.perf_counter() - t
    finally:
        h.remove()
    hidden = kept[0]
    rows = hidden[:, :-1].reshape(1, -1, hidden.shape[-1])
    target = batch[:, 1:].reshape(-1)
    step = scorer_mod.chunk_rows(int(head.weight.shape[0]), head.weight.element_size())
    t = time.perf_counter()
    outs = [head(rows[:, i:i + step])[0] for i in range(0, rows.shape[1], step)]
    head_s = time.perf_counter() - t
    t = time.perf_counter()
    for k, z in enumerate(outs):
        scorer_mod.summed_nll(z, target[k * step:(k + 1) * step])
    loss_s = time.perf_counter() - t
    return {"trunk_s": trunk, "head_s": head_s, "loss_s": loss_s}


def run_dtype(name: str, a) -> dict:
    from prunestudio.core.evaluate import perplexity as pm
    from prunestudio.core.evaluate.perplexity import NllScorer, eval_ids
    from prunestudio.core.model.loading import load_model
    from prunestudio.core.model.speed import cpu_model, model_facts, probe_flops

    loaded = load_model("demo", "cpu", name)
    model, tok = loaded.model, loaded.tokenizer
    model.eval()
    facts = model_facts(model)
    dtype = next(model.parameters()).dtype
    ids = eval_ids(tok, "wikitext2", a.seqlen, data_dir=DATA)
    n = ids.numel() // a.seqlen
    if a.max_windows:
        n = min(n, a.max_windows)
    windows = ids[: n * a.seqlen].view(n, a.seqlen)
    rows = a.batch_size * a.seqlen
    flops_tok = facts.forward_flops_per_token(a.seqlen // 2)
    full, fast = NllScorer(model, "full"), NllScorer(model)
    nll = {"full": torch.zeros((), dtype=torch.float64), "chunked": torch.zeros((), dtype=torch.float64),
           "same": torch.zeros((), dtype=torch.float64)}  # "same": the chunked path on the batches "full" ran on
    secs = {"full": 0.0, "chunked": 0.0}
    count, old_count, old_tokens = 0, 0, 0
    probes: list[float] = []
    square = probe_flops("cpu", str(dtype).replace("torch.", ""))
    with torch.inference_mode():
        model(input_ids=windows[:1, :64], use_cache=False)  # warm up
        split = [parts(model, pm, windows[: a.batch_size]) for _ in range(2)]
        batches = list(range(0, n, a.batch_size))
        for k, i in enumerate(batches):
            if k % a.probe_every == 0:
                probes.append(shapes_probe(facts, rows, dtype))
            batch = windows[i:i + a.batch_size]
            old_too = k % a.old_every == 0
            order = ("full", "chunked") if k % 2 == 0 else ("chunked", "full")
            for path in order:
                if path == "full" and not old_too:
                    continue
                t = time.perf_counter()
                s, c = (full if path == "full" else fast)(batch)
                secs[path] += time.perf_counter() - t
                nll[path] += s
                if path == "chunked" and old_too:
                    nll["same"] += s
            count += c
            if old_too:
                old_count += c
                old_tokens += batch.numel()
            if (k + 1) % 10 == 0 or k + 1 == len(batches):
                done = (i + batch.shape[0]) * a.seqlen
                print(json.dumps({"dtype": name, "windows": i + batch.shape[0], "of": n,
                                  "tokens_per_s": round(done / secs["chunked"], 1),
                                  "old_tokens_per_s": round(old_tokens / secs["full"], 1),
                                  "ppl": math.exp(nll["chunked"].item() / count),
                                  "old_ppl": math.exp(nll["full"].item() / old_count),
                                  "loadavg": os.getloadavg()[0]}), flush=True)
    tokens = n * a.seqlen
    probe = sum(probes) / len(probes)
    ppl, old = math.exp(nll["chunked"].item() / count), math.exp(nll["full"].item() / old_count)
    same = math.exp(nll["same"].item() / old_count)  # the chunked path on the windows "full" ran on
    best = min(split, key=lambda d: d["trunk_s"] + d["head_s"] + d["loss_s"])
    total = sum(best.values())
    head_flops = 2.0 * facts.head_params * rows
    trunk_flops = flops_tok * rows - head_flops
    flags = cpu_flags()
    res = {
        "dtype": name, "tokens_per_s": tokens / secs["chunked"], "old_tokens_per_s": old_tokens / secs["full"],
        "speedup": tokens / secs["chunked"] / (old_tokens / secs["full"]),
        "probe_flops_per_s": probe, "probe_min": min(probes), "probe_max": max(probes), "probes": len(probes),
        "square_probe_flops_per_s": square,
        "forward_flops_per_token": flops_tok,
        "fraction_of_probe": tokens / secs["chunked"] * flops_tok / probe,
        "old_fraction_of_probe": old_tokens / secs["full"] * flops_tok / probe,
        "ppl": ppl, "old_ppl": old, "rel_diff": abs(same - old) / old, "path": fast.path,
        "old_every": a.old_every, "old_windows": old_tokens // a.seqlen, "ppl_on_old_windows": same,
        "windows": n, "seqlen": a.seqlen, "batch_size": a.batch_size, "tokens": tokens,
        "full_test_set": n == ids.numel() // a.seqlen, "chunk_rows": pm.chunk_rows(facts.vocab, dtype.itemsize),
        "parts_s": {k: round(v, 3) for k, v in best.items()},
        "parts_fraction": {k.replace("_s", ""): round(v / total, 3) for k, v in best.items()},
        "trunk_fraction_of_probe": trunk_flops / best["trunk_s"] / probe,
        "head_fraction_of_probe": head_flops / best["head_s"] / probe,
        "seconds": secs, "threads": torch.get_num_threads(), "cpu": cpu_model(),
        "bf16_emulated": name == "bf16" and not ({"avx512_bf16", "amx_bf16"} & flags),
        "loadavg": os.getloadavg(),
    }
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--max-windows", type=int, default=0, help="0: the whole test set")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--probe-every", type=int, default=5, help="batches between two probes")
    ap.add_argument("--old-every", type=int, default=1,
                    help="the path before the change on every K-th batch only (its ppl on those windows, "
                         "rel_diff against the new path on the same windows); 1: every batch")
    ap.add_argument("--out", default=str(HERE / "results" / "ppl_speed.json"))
    a = ap.parse_args()
    runs = [run_dtype(d.strip(), a) for d in a.dtypes.split(",") if d.strip()]
    out = dict(runs[0])
    out["runs"] = runs
    line = json.dumps(out)
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(line)


if __name__ == "__main__":
    main()
