"""One realistic mixture-of-experts shape pruned on this machine: time, peak memory, the estimate.

    python bench/moe_prune.py [--methods wanda,sparsegpt] [--hidden 1024] [--experts 64] [--top-k 8]
        [--moe-intermediate 384] [--blocks 4] [--vocab 32768] [--nsamples 16] [--seqlen 256]
        [--out bench/results/moe_prune.json]

A random-init Qwen3-MoE (transformers' ``Qwen3MoeConfig``; the default shape scales Qwen3-30B-A3B
down: hidden 1024 instead of 2048, 64 experts instead of 128, top-8 routing and an expert width of
0.375 x hidden as there, 4 decoder blocks), pruned in float32 on the CPU with Prune Studio's
pipeline (:func:`prunestudio.core.prune.pipeline.iter_prune`, ``PruneConfig(method, sparsity=0.5)``).
Calibration: ``nsamples`` windows of ``seqlen`` tokens at random offsets (seed 0) of WikiText-2's
test text, tokenised byte-wise (each UTF-8 byte one token id): realistic, repetitive text, so the
router sends the experts uneven numbers of tokens. The vocabulary is kept at 32,768 so that, as in
a real 48-block model, the experts hold most of the weights (a 151,936-token vocabulary would make
the embeddings half of a 4-block model).

Each method runs in a child process of its own, so that peaks do not mix: the child builds the
model (seed 0), samples its resident set size every 20 ms (psutil) per step, and reads
``resource.getrusage`` ``ru_maxrss`` at the end. Beside the measurement it prints
``core/prune/memory.estimate_run_memory`` for the run (``info`` = ``describe(model)`` plus
``module_shapes(model)``), both with the method's own pass order (what the GUI shows) and with two
passes per block (what the pipeline runs on MoE blocks). Per block: wall time (``BlockDone``), the
pruning's share (the ``ModulePruned`` seconds), and the routed token counts of the experts
(min / median / max, and how many experts were pruned with the "all tokens" rule).

The last line printed is one JSON object (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WIKI = REPO.parent / "shared" / "data" / "wikitext-2" / "wiki.test.raw"
GIB = 2 ** 30


def cpu_name() -> str:
    """``lscpu``'s model name, with /proc/cpuinfo's family and model and the vector extensions."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    isa += ", bf16" if {"avx512_bf16", "amx_bf16"} & flags else ", no bf16 instructions"
    return (f"{fields.get('model name', 'unknown')} (family {fields.get('cpu family')}, "
            f"model {fields.get('model')}; {isa})")


class PeakRss:
    """The highest resident set size of this process per named step, sampled in a thread."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval, self.step, self.peaks = interval, "start", {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return self._proc.memory_info().rss

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, step = self.rss(), self.step
            self.peaks[step] = max(self.peaks.get(step, 0), rss)
            time.sleep(self.interval)

    def enter(self, step: str) -> None:
        rss = self.rss()
        self.peaks[self.step] = max(self.peaks.get(self.step, 0), rss)
        self.step = step
        self.peaks[step] = max(self.peaks.get(step, 0), rss)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peaks[self.step] = max(self.peaks.get(self.step, 0), self.rss())


def calibration_ids(nsamples: int, seqlen: int, seed: int = 0):
    """``[nsamples, seqlen]`` byte ids of WikiText-2 test windows at random offsets."""
    import torch

    data = torch.frombuffer(bytearray(WIKI.read_bytes()), dtype=torch.uint8)
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - seqlen, (nsamples,), generator=g)
    return torch.stack([data[s:s + seqlen] for s in starts.tolist()]).long()


def build_model(a: argparse.Namespace):
    import torch
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    torch.manual_seed(0)
    heads = a.hidden // 64
    cfg = Qwen3MoeConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.blocks, num_attention_heads=heads,
        num_key_value_heads=max(heads // 8, 1), head_dim=64, intermediate_size=3 * a.hidden,
        moe_intermediate_size=a.moe_intermediate, num_experts=a.experts, num_experts_per_tok=a.top_k,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], max_position_embeddings=4096,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def child(a: argparse.Namespace) -> dict:
    """One method, measured in this process."""
    import torch
    from prunestudio.core.config import PruneConfig
    from prunestudio.core.events import BlockDone, ModulePruned, run_to_completion
    from prunestudio.core.model.loading import describe
    from prunestudio.core.prune.memory import estimate_run_memory, module_shapes
    from prunestudio.core.prune.pipeline import iter_prune

    from transformers import Qwen3MoeForCausalLM  # noqa: F401  (imported before the base is read)

    ids = calibration_ids(a.nsamples, a.seqlen)
    cfg = PruneConfig(method=a.child, sparsity=a.sparsity)
    with PeakRss() as mem:
        base = mem.rss()
        mem.enter("build")
        t0 = time.perf_counter()
        model = build_model(a)
        build_s = time.perf_counter() - t0
        info = {**describe(model), "module_shapes": module_shapes(model)}
        after_build = mem.rss()
        mem.enter("prune")
        blocks: dict[int, dict] = {}

        def on_event(ev: object) -> None:
            if isinstance(ev, ModulePruned):
                b = blocks.setdefault(ev.block, {"prune_s": 0.0, "experts": {}})
                b["prune_s"] += ev.seconds
                ex = ev.info.get("experts")
                if ex:
                    b["experts"][ev.name] = ex
            elif isinstance(ev, BlockDone):
                blocks.setdefault(ev.index, {"prune_s": 0.0, "experts": {}})["wall_s"] = ev.seconds

        t0 = time.perf_counter()
        res = run_to_completion(iter_prune(model, ids, cfg, previews=False), on_event)
        prune_s = time.perf_counter() - t0
        mem.enter("after")
        with torch.no_grad():  # the pruned model still computes
            logits = model(ids[:2]).logits
        finite = bool(torch.isfinite(logits).all())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    maxrss = usage.ru_maxrss * 1024  # KiB on Linux

    nbytes = 4
    est_gui = estimate_run_memory(info, a.nsamples, a.seqlen, cfg, nbytes, cfg.batch_size, one_pass=cfg.passes_once)
    est_two = estimate_run_memory(info, a.nsamples, a.seqlen, cfg, nbytes, cfg.batch_size, one_pass=False)
    per_block = []
    for bi in sorted(blocks):
        b = blocks[bi]
        ex = next(iter(b["experts"].values()), None)  # tokens and rules are the same for every kind
        row = {"block": bi, "wall_s": round(b.get("wall_s", 0.0), 2), "prune_s": round(b["prune_s"], 2)}
        if ex and ex.get("tokens") is not None:
            t = ex["tokens"]
            row["tokens"] = {"min": min(t), "median": statistics.median(t), "max": max(t), "sum": sum(t),
                             "zero": sum(1 for x in t if x == 0)}
            row["all_tokens_rule"] = sum(1 for r in ex["rule"] if r == "all tokens")
            row["expert_sparsity"] = {k: [round(min(v["sparsity"]), 4), round(max(v["sparsity"]), 4)]
                                      for k, v in b["experts"].items()}
        per_block.append(row)
    prune_peak = mem.peaks["prune"]  # from the model built to the pipeline's return
    def mb(v: float) -> float:
        return round(v / GIB, 3)

    return {
        "method": a.child, "sparsity": a.sparsity, "global_sparsity": round(res.global_sparsity, 4),
        "notes": res.notes, "logits_finite": finite, "torch_threads": torch.get_num_threads(),
        "build_s": round(build_s, 1), "prune_wall_s": round(prune_s, 1),
        # CPU seconds of the whole child (imports, build, pruning, the check): on a shared machine the
        # wall time stretches with the load, the CPU time much less
        "process_cpu_s": {"user": round(usage.ru_utime, 1), "system": round(usage.ru_stime, 1)},
        "seconds": {k: round(v, 1) for k, v in res.seconds.items()},
        "per_block": per_block,
        "memory_gib": {
            "base_rss": mb(base), "after_build_rss": mb(after_build),
            "peak_rss_by_step": {k: mb(v) for k, v in mem.peaks.items()},
            "ru_maxrss": mb(maxrss),
            "prune_peak_above_base": mb(prune_peak - base),
            "prune_peak_above_weights": mb(prune_peak - after_build),
            "estimate_method_order": {k: mb(v) for k, v in est_gui.items()},
            "estimate_two_passes": {k: mb(v) for k, v in est_two.items()},
            # measured over estimated: the whole run (host) and what comes on top of the weights
            "ratio_host": round((prune_peak - base) / est_two["host"], 3),
            "ratio_above_weights": round((prune_peak - after_build) / (est_two["host"] - est_two["weights"]), 3),
        },
        "info": {k: info[k] for k in ("parameters", "prunable_parameters", "blocks", "expert_counts", "hidden_size")},
        "module_shapes": {k: list(v) for k, v in info["module_shapes"].items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="wanda,sparsegpt")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--moe-intermediate", type=int, default=384)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--out", default=str(HERE / "results" / "moe_prune.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        Path(a.child_out).write_text(json.dumps(child(a)))
        return

    import psutil

    shape = {k: getattr(a, k) for k in ("hidden", "experts", "top_k", "moe_intermediate", "blocks", "vocab")}
    runs = []
    for method in a.methods.split(","):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            tmp = f.name
        argv = [sys.executable, __file__, "--child", method, "--child-out", tmp, "--sparsity", str(a.sparsity),
                "--nsamples", str(a.nsamples), "--seqlen", str(a.seqlen)]
        argv += [x for k, v in shape.items() for x in (f"--{k.replace('_', '-')}", str(v))]
        t0 = time.perf_counter()
        subprocess.run(argv, check=True)
        r = json.loads(Path(tmp).read_text())
        os.unlink(tmp)
        r["process_wall_s"] = round(time.perf_counter() - t0, 1)
        m = r["memory_gib"]
        print(f"{method}: pruning {r['prune_wall_s']} s; peak above base {m['prune_peak_above_base']} GiB, "
              f"estimate {m['estimate_two_passes']['host']} GiB (x{m['ratio_host']}); above the weights "
              f"{m['prune_peak_above_weights']} GiB vs {round(m['estimate_two_passes']['host'] - m['estimate_two_passes']['weights'], 3)}"
              f" GiB (x{m['ratio_above_weights']})", file=sys.stderr)
        runs.append(r)
    out = {
        "cpu": cpu_name(), "cores": psutil.cpu_count(logical=True),
        "ram_total_gib": round(psutil.virtual_memory().total / GIB, 1),
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        "model": {"family": "qwen3_moe (random init, seed 0)", **shape, "heads": a.hidden // 64,
                  "kv_heads": max(a.hidden // 64 // 8, 1), "head_dim": 64, "dtype": "float32"},
        "calibration": {"source": "WikiText-2 test, UTF-8 bytes as ids, random offsets (seed 0)",
                        "nsamples": a.nsamples, "seqlen": a.seqlen},
        "device": "cpu", "runs": runs,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
