"""A model larger than this machine's memory, pruned end to end with disk offload.

    python bench/bigger_than_memory.py [--ram-multiple 1.5] [--folder DIR] [--method wanda]
        [--nsamples 16] [--seqlen 128] [--threads N] [--keep] [--out bench/results/bigger_than_memory.json]

The model: a random-init Qwen3 with Qwen3-32B's proportions (hidden 5120, 64 query and 8 key/value
heads of 128, MLP width 25,600, vocabulary 151,936, untied output head; transformers'
``Qwen3Config``) in bfloat16, with the fewest decoder blocks that make its safetensors files at
least ``--ram-multiple`` times this machine's RAM (``psutil.virtual_memory().total``). The script
writes the shards itself (2 GiB each, weights ~ N(0, 0.02), norms 1), one tensor at a time, so
writing them never holds more than one shard; the names and shapes come from the model class built
on the meta device, so the files load as an ordinary Hugging Face folder.

A child process then does what ``prunestudio prune FOLDER --offload disk --dtype bf16`` does:
``load_model(..., offload="disk")`` and :func:`prunestudio.core.prune.pipeline.iter_prune` (Wanda
50%, two passes per block) on ``nsamples`` x ``seqlen`` calibration tokens (windows of WikiText-2's
test text tokenised byte-wise: :func:`moe_prune.calibration_ids`), then one forward pass of the
pruned model on 16 tokens (every block read back from the work folder). Measured: the resident set
size every 20 ms (psutil; memory-mapped pages the process touched count) and ``ru_maxrss``; the
time of every block (``BlockDone``); the bytes of the pruned blocks in the work folder (stored
compactly, see ``core/model/offload.py``). Beside them, Prune Studio's own predictions for the run:
``estimate_run_memory(..., offload="disk")`` (host memory) and ``core/run/estimate.pruning`` (time,
at the bf16 matrix-product rate of this machine probed in the same child).

Disk: the shards (1.5 x RAM) plus the pruned blocks (about 56% of the blocks at 50% sparsity);
the script refuses to start when the folder's disk lacks either. Everything it wrote is removed at
the end, also after an error or Ctrl-C (``--keep`` keeps the shards for a rerun).

The last line printed is one JSON object (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from moe_prune import PeakRss, calibration_ids, cpu_name  # noqa: E402

GIB = 2 ** 30
SHARD_BYTES = 2 * GIB


def qwen3_32b_like(layers: int):
    from transformers import Qwen3Config

    return Qwen3Config(hidden_size=5120, intermediate_size=25600, num_attention_heads=64, num_key_value_heads=8,
                       head_dim=128, num_hidden_layers=layers, vocab_size=151936, tie_word_embeddings=False,
                       max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                       torch_dtype="bfloat16")


def shapes_of(config) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model the config describes, as the model class names it."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def bytes_of(shapes: dict[str, tuple[int, ...]], nbytes: int = 2) -> int:
    total = 0
    for s in shapes.values():
        n = 1
        for d in s:
            n *= d
        total += n * nbytes
    return total


def layers_for(target_bytes: int) -> int:
    one = bytes_of(shapes_of(qwen3_32b_like(1)))
    two = bytes_of(shapes_of(qwen3_32b_like(2)))
    per_block, outside = two - one, 2 * one - two
    return max(1, -(-(target_bytes - outside) // per_block))


def write_model(folder: Path, config) -> int:
    """The random-init shards, config and index; returns the bytes written."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    shapes = shapes_of(config)
    g = torch.Generator().manual_seed(0)
    shard: dict[str, torch.Tensor] = {}
    size = 0
    files: list[list[str]] = []
    total = 0

    def flush() -> None:
        nonlocal shard, size
        if shard:
            name = f"part-{len(files) + 1:05d}.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            files.append(list(shard))
            shard, size = {}, 0

    t0 = time.perf_counter()
    for name, shape in shapes.items():
        if len(shape) == 1:
            t = torch.ones(shape, dtype=torch.bfloat16)
        else:
            t = torch.randn(shape, generator=g, dtype=torch.float32).mul_(0.02).to(torch.bfloat16)
        nbytes = t.numel() * t.element_size()
        if size and size + nbytes > SHARD_BYTES:
            flush()
        shard[name] = t
        size += nbytes
        total += nbytes
    flush()
    n = len(files)
    weight_map = {}
    for k, names in enumerate(files, start=1):
        final = f"model-{k:05d}-of-{n:05d}.safetensors"
        os.replace(folder / f"part-{k:05d}.safetensors", folder / final)
        weight_map.update({t: final for t in names})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    config.save_pretrained(folder)
    from prunestudio.core.model.demo import ensure_demo_model

    # a tokenizer for load_model (the demo's: the calibration ids are given, not tokenised)
    demo = Path(ensure_demo_model())
    for f in demo.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")) or f.name in ("vocab.json", "merges.txt"):
            shutil.copy(f, folder / f.name)
    print(f"wrote {total / GIB:.1f} GiB in {n} shards in {time.perf_counter() - t0:.0f} s", flush=True)
    return total


def _written(folder: Path, layers: int) -> bool:
    """Whether ``folder`` holds this script's model with ``layers`` blocks (a ``--keep`` run's)."""
    try:
        config = json.loads((folder / "config.json").read_text())
        index = json.loads((folder / "model.safetensors.index.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return config.get("num_hidden_layers") == layers and all(
        (folder / f).exists() for f in set(index["weight_map"].values()))


def child(a: argparse.Namespace) -> dict:
    import torch
    from prunestudio.core.config import PruneConfig
    from prunestudio.core.events import BlockDone, ModulePruned, run_to_completion
    from prunestudio.core.model.loading import describe, load_model
    from prunestudio.core.model.offload import store_of
    from prunestudio.core.model.speed import machine_speed, model_facts
    from prunestudio.core.prune.memory import estimate_run_memory, module_shapes
    from prunestudio.core.prune.pipeline import iter_prune
    from prunestudio.core.run import estimate

    torch.set_num_threads(a.threads)
    ids = calibration_ids(a.nsamples, a.seqlen)
    ids = ids % 151936
    blocks: list[float] = []
    module_s: list[float] = [0.0]  # per block: the modules' own work (masks, counts, previews, output error)
    with PeakRss() as mem:
        base = mem.rss()
        mem.enter("load")
        t0 = time.perf_counter()
        loaded = load_model(a.folder, "cpu", "bf16", offload="disk", offload_dir=a.work)
        load_s = time.perf_counter() - t0
        after_load = mem.rss()
        model = loaded.model
        info = {**describe(model), "module_shapes": module_shapes(model)}
        cfg = PruneConfig(method=a.method, sparsity=0.5, batch_size=4).with_offload_mode("disk")
        speed = machine_speed("cpu", "bfloat16", a.threads)
        est_time = estimate.pruning(model_facts(model), speed, cfg, a.nsamples, a.seqlen)
        est_mem = estimate_run_memory(info, a.nsamples, a.seqlen, cfg, 2, cfg.batch_size, offload="disk",
                                      one_pass=cfg.passes_once)
        mem.enter("prune")

        def on_event(ev: object) -> None:
            if isinstance(ev, ModulePruned):
                module_s[-1] += ev.seconds
            if isinstance(ev, BlockDone):
                blocks.append(ev.seconds)
                print(f"block {ev.index + 1}: {ev.seconds:.1f} s (modules {module_s[-1]:.1f} s), sparsity "
                      f"{ev.sparsity:.3f}, rss {mem.rss() / GIB:.2f} GiB", flush=True)
                module_s.append(0.0)

        t0 = time.perf_counter()
        result = run_to_completion(iter_prune(model, ids, cfg, "cpu"), on_event)
        prune_s = time.perf_counter() - t0
        store = store_of(model)
        pruned_bytes = sum(p.stat().st_size for p in store.pruned.values())
        mem.enter("forward")
        t0 = time.perf_counter()
        with torch.no_grad():
            logits = model(input_ids=ids[:1, :16]).logits
        forward_s = time.perf_counter() - t0
        finite = bool(torch.isfinite(logits).all())
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"base_rss_gib": base / GIB, "after_load_rss_gib": after_load / GIB,
            "peak_rss_by_step_gib": {k: v / GIB for k, v in mem.peaks.items()}, "ru_maxrss_gib": maxrss / GIB,
            "load_s": load_s, "prune_s": prune_s, "block_s": blocks, "module_s": module_s[:len(blocks)],
            "forward_16_tokens_s": forward_s,
            "logits_finite": finite, "global_sparsity": result.global_sparsity,
            "pruned_blocks_bytes": pruned_bytes, "estimate_host_gib": est_mem["host"] / GIB,
            "estimate_memory_gib": {k: v / GIB for k, v in est_mem.items()},
            "estimate_prune_s": est_time.seconds, "estimate_module_s": est_time.module_seconds,
            "probe_bf16_gflops": speed.flops / 1e9,
            "blocks_read": store.loads}


def main() -> None:
    import psutil

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ram-multiple", type=float, default=1.5)
    p.add_argument("--folder", default=None, help="where the shards are written (default: the cache)")
    p.add_argument("--method", default="wanda")
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0))))
    p.add_argument("--keep", action="store_true", help="keep the shards (a rerun then skips writing them)")
    p.add_argument("--out", default=str(HERE / "results" / "bigger_than_memory.json"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a)))
        return

    from prunestudio.core.model.demo import cache_root

    ram = psutil.virtual_memory().total
    layers = layers_for(int(a.ram_multiple * ram))
    config = qwen3_32b_like(layers)
    shapes = shapes_of(config)
    model_bytes = bytes_of(shapes)
    block_bytes = sum(bytes_of({k: s}) for k, s in shapes.items() if ".layers." in k)
    folder = Path(a.folder or cache_root() / "bench-bigger-than-memory")
    work = folder.parent / (folder.name + "-pruned-blocks")
    reuse = _written(folder, layers)
    need = (0 if reuse else model_bytes) + int(0.6 * block_bytes) + GIB
    folder.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder.parent).free
    print(f"RAM {ram / GIB:.1f} GiB; model {layers} blocks, {model_bytes / GIB:.1f} GiB in bf16 "
          f"({model_bytes / ram:.2f}x RAM); disk needed {need / GIB:.1f} GiB, free {free / GIB:.1f} GiB", flush=True)
    if free < need:
        sys.exit(f"Not enough disk at {folder.parent}: {need / GIB:.1f} GiB needed, {free / GIB:.1f} GiB free.")
    try:
        t0 = time.perf_counter()
        if not reuse:
            shutil.rmtree(folder, ignore_errors=True)
            write_model(folder, config)
        write_s = time.perf_counter() - t0 if not reuse else None
        cmd = [sys.executable, __file__, "--child", "--folder", str(folder), "--work", str(work),
               "--method", a.method, "--nsamples", str(a.nsamples), "--seqlen", str(a.seqlen),
               "--threads", str(a.threads)]
        last = ""
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:  # the child's progress as it comes; its last line is the result
                if last:
                    print(last, flush=True)
                last = line.rstrip("\n")
        if proc.returncode != 0 or not last.startswith("{"):
            sys.exit(f"the pruning child failed (exit {proc.returncode})")
        m = json.loads(last)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not a.keep:
            shutil.rmtree(folder, ignore_errors=True)
    bs = m["block_s"]
    out = {
        "cpu": cpu_name(), "threads": a.threads, "load_average_at_end": os.getloadavg(),
        "ram_gib": ram / GIB, "model": {"shape": "Qwen3-32B-like", "blocks": layers, "dtype": "bfloat16",
                                        "bytes_gib": model_bytes / GIB, "times_ram": model_bytes / ram,
                                        "parameters": model_bytes // 2},
        "method": a.method, "sparsity": 0.5, "nsamples": a.nsamples, "seqlen": a.seqlen,
        "write_shards_s": write_s,
        **m,
        "block_s_median": statistics.median(bs), "block_s_min": min(bs), "block_s_max": max(bs),
        "module_s_median": statistics.median(m["module_s"]),
        "estimate_block_s": m["estimate_prune_s"] / layers,
        "estimate_module_s_per_block": m["estimate_module_s"] / layers,
        "peak_rss_gib": max(m["peak_rss_by_step_gib"].values()),
        "peak_rss_over_ram": max(m["peak_rss_by_step_gib"].values()) * GIB / ram,
        "peak_over_estimate": max(m["peak_rss_by_step_gib"].values()) / m["estimate_host_gib"],
        "time_over_estimate": m["prune_s"] / m["estimate_prune_s"],
        "pruned_blocks_over_dense_blocks": m["pruned_blocks_bytes"] / block_bytes,
        "cleaned_up": not a.keep and not folder.exists() and not work.exists(),
    }
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
