"""How fast one decoder block's forward pass runs against the machine's matrix-product probe, by shape.

    python bench/block_forward.py [--dtypes float32,bfloat16] [--threads 2]

Random-init Llama-style blocks of three real shapes (SmolLM2-135M: hidden 576; a Qwen2.5-1.5B
shape: hidden 1536; a Qwen3-32B shape: hidden 5120), each run on batches of the pruning pipeline's
shape (8 sequences, 512 tokens; 128 for the 32B shape, as in ``bench/bigger_than_memory.py``), in
each dtype, timed after a warm-up, beside the same process's probe
(``core/model/speed.probe_flops``). Prints one JSON line per shape and dtype with the block's
FLOPs per pass (2 per weight and token plus the attention's), its rate and the share of the probe,
and one JSON object with all of them last. ``core/run/estimate.prune_forward_efficiency`` is
fitted to these shares (scaled to the demo model's measured pruning runs).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from prunestudio.core.model.speed import cpu_model, probe_flops

SHAPES = {  # name: (hidden, intermediate, heads, kv heads, head dim, seqlen)
    "smollm2-135m": (576, 1536, 9, 3, 64, 512),
    "qwen2.5-1.5b": (1536, 8960, 12, 2, 128, 512),
    "qwen3-32b": (5120, 25600, 64, 8, 128, 128),
}


def block_of(shape: tuple[int, ...], dtype: torch.dtype):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    h, inter, heads, kv, hd, _ = shape
    cfg = LlamaConfig(hidden_size=h, intermediate_size=inter, num_attention_heads=heads, num_key_value_heads=kv,
                      head_dim=hd, num_hidden_layers=1, max_position_embeddings=4096)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    layer = LlamaDecoderLayer(cfg, 0).to(dtype).eval()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return layer, LlamaRotaryEmbedding(cfg), cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0))))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for dname in a.dtypes.split(","):
        dtype = getattr(torch, dname)
        probe = probe_flops("cpu", dname)
        for name in a.shapes.split(","):
            shape = SHAPES[name]
            layer, rope, cfg = block_of(shape, dtype)
            seq = shape[5]
            x = torch.randn(a.batch, seq, shape[0], dtype=dtype)
            pos = torch.arange(seq)[None].expand(a.batch, -1)
            pe = rope(x, pos)
            weights = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))
            # 2 per weight and token, plus causal attention: scores and weighted sum, 2 x 2 x hidden
            # per earlier token on average seq/2 (the convention of ModelFacts.forward_flops_per_token)
            flops = a.batch * seq * (2.0 * weights + 4.0 * shape[2] * shape[4] * seq / 2)
            with torch.no_grad():
                layer(x, position_embeddings=pe)
                times = []
                for _ in range(3):
                    t = time.perf_counter()
                    layer(x, position_embeddings=pe)
                    times.append(time.perf_counter() - t)
            best = min(times)
            row = {"shape": name, "hidden": shape[0], "dtype": dname, "tokens": a.batch * seq,
                   "seconds": round(best, 4), "gflops": round(flops / best / 1e9, 1),
                   "probe_gflops": round(probe / 1e9, 1), "share_of_probe": round(flops / best / probe, 3)}
            print(json.dumps(row), flush=True)
            rows.append(row)
            del layer, x
    print(json.dumps({"cpu": cpu_model(), "threads": a.threads, "load": os.getloadavg(), "rows": rows}))


if __name__ == "__main__":
    main()
