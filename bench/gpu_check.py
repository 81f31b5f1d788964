"""GPU check: Prune Studio's pipeline on randomly initialised models of real shapes.

    python bench/gpu_check.py                 # Llama-3-8B block shapes, bf16, on cuda
    python bench/gpu_check.py --tiny          # a tiny model on the CPU: smoke test of this script

Needs no network and no model files: the model is built from a config and filled with seeded
random weights (std 0.02, norms 1), the calibration tokens are seeded random ids. For Wanda and
SparseGPT (50%, bf16 compute, float32 statistics, offload on: the model in host memory, one block
on the GPU) it prints tokens/s, seconds per block, peak CUDA memory against Prune Studio's
estimate, the CUDA memory still allocated after each block (it must not grow: memory is released
between blocks), and how many host synchronisations happened inside the per-module loop (CUDA
sync debug mode around pruning each module; expected: 0). Then the same model, saved to a
temporary safetensors folder, is pruned with disk offload (blocks memory-mapped, only one
materialised at a time) and compared with the in-memory result (identical masks expected), with
peak host memory of both.

``--layers`` sets how many of the model's blocks are built (default 8 of Llama-3-8B's 32: every
block has the full shapes, so seconds per block and memory are those of the real model; the full
model's time is extrapolated). The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                 vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
                 tie_word_embeddings=False, full_layers=32)
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=256, max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-5,
            tie_word_embeddings=False, full_layers=4)


def build_model(shape: dict, layers: int, dtype: torch.dtype, init_device: str, seed: int = 0):
    """A Llama model of ``shape`` with ``layers`` blocks, seeded random weights, on the CPU."""
    from prunestudio.core.model.meta_buffers import rebuild_meta_buffers
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = {k: v for k, v in shape.items() if k != "full_layers"}
    cfg = LlamaConfig(num_hidden_layers=layers, bos_token_id=1, eos_token_id=2, **kw)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    g = torch.Generator(device=init_device).manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()):
            if p.dim() == 1:
                t = torch.ones(p.shape, dtype=dtype)
            else:
                t = torch.empty(p.shape, dtype=dtype, device=init_device).normal_(0.0, 0.02, generator=g).cpu()
            mod_name, _, leaf = name.rpartition(".")
            model.get_submodule(mod_name)._parameters[leaf] = torch.nn.Parameter(t, requires_grad=False)
    rebuild_meta_buffers(model)
    model.eval()
    return model


class RssPeak:
    """Peak resident memory of this process, sampled by a thread."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> "RssPeak":
        self.base = self.proc.memory_info().rss
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def sync_guard(device: torch.device) -> tuple[list, callable]:
    """Count host synchronisations inside the per-module work of the pipeline (CUDA only)."""
    from prunestudio.core.prune import block as pipeline_block

    caught: list[str] = []
    if device.type != "cuda":
        return caught, lambda: None
    orig_prune, orig_defer = pipeline_block._prune_one, pipeline_block._Pending.defer

    def guarded(fn):
        def inner(*a, **k):
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with warnings.catch_warnings(record=True) as w:
                    warnings.simplefilter("always")
                    out = fn(*a, **k)
                caught.extend(str(x.message).splitlines()[0] for x in w if "synchroniz" in str(x.message).lower())
            finally:
                torch.cuda.set_sync_debug_mode(0)
            return out

        return inner

    pipeline_block._prune_one = guarded(orig_prune)
    pipeline_block._Pending.defer = guarded(orig_defer)

    def undo() -> None:
        pipeline_block._prune_one, pipeline_block._Pending.defer = orig_prune, orig_defer

    return caught, undo


def prune_run(model, ids, method: str, device: torch.device, batch_size: int, offload: str = "cpu") -> dict:
    from prunestudio.core.config import PruneConfig
    from prunestudio.core.events import BlockDone, run_to_completion
    from prunestudio.core.prune.pipeline import iter_prune

    cfg = PruneConfig(method=method, sparsity=0.5, batch_size=batch_size).with_offload_mode(offload)
    blocks: list[dict] = []
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()

    def on_event(ev) -> None:
        if isinstance(ev, BlockDone):
            blocks.append({"index": ev.index, "seconds": ev.seconds, "sparsity": ev.sparsity,
                           "cuda_allocated_after": torch.cuda.memory_allocated() if cuda else None})

    caught, undo = sync_guard(device)
    try:
        with RssPeak() as rss:
            t0 = time.perf_counter()
            res = run_to_completion(iter_prune(model, ids, cfg, device, previews=True), on_event)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
    finally:
        undo()
    out = {"method": method, "offload": offload, "seconds": seconds, "phases": res.seconds,
           "global_sparsity": res.global_sparsity, "blocks": blocks, "host_peak_rss": rss.peak,
           "host_base_rss": rss.base, "syncs_in_module_loop": len(caught), "sync_examples": caught[:5]}
    if cuda:
        out["cuda_peak_allocated"] = torch.cuda.max_memory_allocated()
        out["cuda_peak_reserved"] = torch.cuda.max_memory_reserved()
        out["cuda_base_allocated"] = base_alloc
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU (smoke test)")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--nsamples", type=int, default=None)
    ap.add_argument("--seqlen", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--methods", default="wanda,sparsegpt")
    ap.add_argument("--no-disk", action="store_true", help="skip the disk-offload comparison")
    ap.add_argument("--out", default=None, help="write the JSON result here too")
    a = ap.parse_args()

    from prunestudio.core.model.loading import describe
    from prunestudio.core.prune.memory import estimate_run_memory, module_shapes

    if a.tiny:
        from prunestudio.core.prune import pipeline

        pipeline.DEFER_HOST_READS = True  # the accelerator's code path, on the CPU
        shape, device, dtype = TINY, torch.device("cpu"), torch.bfloat16
        layers, nsamples, seqlen = a.layers or 3, a.nsamples or 8, a.seqlen or 64
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --tiny for the CPU smoke test")
        shape, device, dtype = LLAMA3_8B, torch.device("cuda"), torch.bfloat16
        layers, nsamples, seqlen = a.layers or 8, a.nsamples or 128, a.seqlen or 2048
    init_device = "cuda" if device.type == "cuda" else "cpu"
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
           "cuda": torch.version.cuda}
    import transformers

    env["transformers"] = transformers.__version__
    print(f"environment: {env}", flush=True)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, shape["vocab_size"], (nsamples, seqlen), generator=g)
    results: dict = {"env": env, "layers": layers, "full_layers": shape["full_layers"], "nsamples": nsamples,
                     "seqlen": seqlen, "batch_size": a.batch_size, "dtype": "bf16", "runs": []}
    wanda_model = None
    for method in a.methods.split(","):
        t0 = time.perf_counter()
        model = build_model(shape, layers, dtype, init_device)
        build_s = time.perf_counter() - t0
        info = describe(model)
        info["module_shapes"] = module_shapes(model)
        est = estimate_run_memory(info, nsamples, seqlen, method, 2, a.batch_size, offload="cpu")
        r = prune_run(model, ids, method, device, a.batch_size)
        r["build_seconds"] = build_s
        r["estimate"] = est
        secs = [b["seconds"] for b in r["blocks"]]
        steady = secs[1:] if len(secs) > 1 else secs
        per_block = statistics.median(steady)
        r["seconds_per_block_median"] = per_block
        r["tokens_per_second_per_block"] = nsamples * seqlen / per_block
        r["extrapolated_full_model_seconds"] = per_block * shape["full_layers"]
        gib = 2 ** 30
        print(f"\n{method}: {layers} blocks in {r['seconds']:.1f} s (model built in {build_s:.1f} s); "
              f"median {per_block:.2f} s/block, {r['tokens_per_second_per_block']:,.0f} calibration tokens/s "
              f"per block; full {shape['full_layers']}-block model ~{r['extrapolated_full_model_seconds']:.0f} s",
              flush=True)
        print(f"  seconds per block: {', '.join(f'{s:.2f}' for s in secs)}")
        if device.type == "cuda":
            allocs = [b["cuda_allocated_after"] / gib for b in r["blocks"]]
            r["cuda_peak_vs_estimate"] = r["cuda_peak_allocated"] / est["device"]
            print(f"  peak CUDA memory {r['cuda_peak_allocated'] / gib:.2f} GiB allocated "
                  f"({r['cuda_peak_reserved'] / gib:.2f} GiB reserved); estimate (device) {est['device'] / gib:.2f} GiB "
                  f"-> measured/estimate {r['cuda_peak_vs_estimate']:.2f}")
            print(f"  CUDA allocated after each block (GiB): {', '.join(f'{x:.2f}' for x in allocs)}")
            r["cuda_released_between_blocks"] = max(allocs) - min(allocs) < 0.05
        print(f"  host synchronisations inside the per-module loop: {r['syncs_in_module_loop']}"
              + (f" e.g. {r['sync_examples'][0]}" if r["sync_examples"] else ""))
        print(f"  host peak RSS {r['host_peak_rss'] / gib:.2f} GiB; global sparsity {r['global_sparsity']:.4f}")
        results["runs"].append(r)
        if method == "wanda" and not a.no_disk:
            wanda_model = model
        else:
            del model

    if wanda_model is not None:
        # disk offload: same seeded model, saved, pruned from disk; compared with the in-memory result
        from prunestudio.core.model.offload import load_model_lazy, store_of

        with tempfile.TemporaryDirectory(prefix="ps-gpu-check-") as tmp:
            t0 = time.perf_counter()
            fresh = build_model(shape, layers, dtype, init_device)
            fresh.save_pretrained(tmp, safe_serialization=True)
            del fresh
            save_s = time.perf_counter() - t0
            lazy = load_model_lazy(tmp, dtype)
            r = prune_run(lazy, ids, "wanda", device, a.batch_size, offload="disk")
            store = store_of(lazy)
            ref = wanda_model.state_dict()
            same = all(torch.equal(t, ref[k].cpu()) for k, t in store.block_state_items())
            r["identical_to_in_memory"] = same
            r["save_seconds"] = save_s
            r["blocks_loaded_after_run"] = store.loaded_blocks()
            store.close()
            gib = 2 ** 30
            print(f"\nwanda, disk offload: {r['seconds']:.1f} s; identical to the in-memory run: {same}; "
                  f"host peak RSS {r['host_peak_rss'] / gib:.2f} GiB (in-memory run: "
                  f"{results['runs'][0]['host_peak_rss'] / gib:.2f} GiB)", flush=True)
            if device.type == "cuda":
                print(f"  peak CUDA memory {r['cuda_peak_allocated'] / gib:.2f} GiB")
            results["disk"] = r
    line = json.dumps(results, default=str)
    if a.out:
        Path(a.out).write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
