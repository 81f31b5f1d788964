"""Self-generation throughput: the batched generator beside per-sample ``model.generate``.

    python bench/selfgen_throughput.py [--n 32] [--seqlen 128] [--batch-size 32]

Both produce ``n`` samples of exactly ``seqlen`` tokens from the demo model (float32, CPU) with
the same sampling settings (temperature 0.6, top-p 0.95, top-k 50, repetition penalty 1.2):

* ours: ``core.selfgen.iter_generate`` (zero-data mode, ``drop_top=0``; batched decoding with a
  KV cache, per-sample seeds; its per-sample perplexity comes from the same decoding loop);
* reference: ``model.generate(do_sample=True, ...)`` one sample at a time (batch 1, KV cache),
  each started from the model's document start, ``min_new_tokens = max_new_tokens`` so every
  sample has the same length.

Prints generated tokens per second of each and the ratio; results go to
bench/results/selfgen_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    from prunestudio.core.selfgen import GenerationSettings

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=GenerationSettings.batch_size,
                    help="the generator's batch (default: the product's default)")
    ap.add_argument("--results", default=str(HERE / "results" / "selfgen_throughput.json"))
    a = ap.parse_args()
    os.environ.setdefault("PRUNESTUDIO_CACHE", "/tmp/pscache")
    from prunestudio.core.models import load_model
    from prunestudio.core.selfgen import document_start, generate_calibration_set

    loaded = load_model("demo", "cpu", "fp32")
    model, tok = loaded.model, loaded.tokenizer
    settings = GenerationSettings(n=a.n, seqlen=a.seqlen, drop_top=0.0, batch_size=a.batch_size, seed=0)
    t0 = time.perf_counter()
    cs = generate_calibration_set(model, tok, settings)
    ours_s = time.perf_counter() - t0
    start, _ = document_start(tok)
    new_per_sample = a.seqlen - len(start)
    ours_tokens = a.n * new_per_sample

    prompt = torch.tensor([start], dtype=torch.long)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(a.n):
        model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=0.6,
                       top_p=0.95, top_k=50, repetition_penalty=1.2, max_new_tokens=new_per_sample,
                       min_new_tokens=new_per_sample, pad_token_id=tok.pad_token_id or 0)
    ref_s = time.perf_counter() - t0
    out = {"n": a.n, "seqlen": a.seqlen, "batch_size": a.batch_size, "samples": len(cs.samples),
           "ours_seconds": ours_s, "ours_tokens_per_s": ours_tokens / ours_s,
           "generate_seconds": ref_s, "generate_tokens_per_s": ours_tokens / ref_s,
           "speedup": ref_s / ours_s, "loadavg": os.getloadavg()[0], "threads": torch.get_num_threads()}
    print(f"batched generator: {out['ours_tokens_per_s']:.1f} tokens/s ({ours_s:.1f} s, incl. per-sample perplexity); "
          f"model.generate one by one: {out['generate_tokens_per_s']:.1f} tokens/s ({ref_s:.1f} s); "
          f"speed-up {out['speedup']:.2f}x (load avg {out['loadavg']:.1f})")
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
