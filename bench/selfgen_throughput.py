"""Self-generation throughput: the batched generator beside per-sample ``model.generate``.

    python bench/selfgen_throughput.py [--n 32] [--seqlen 128] [--batch-size 32] [--reference-samples 8]

Both produce samples of exactly ``seqlen`` tokens from the demo model (float32, CPU) with the
same sampling settings (temperature 0.6, top-p 0.95, top-k 50, repetition penalty 1.2):

* ours: ``core.selfgen.iter_generate`` (zero-data mode, ``drop_top=0``; batched decoding with a
  KV cache, per-sample seeds; its per-sample perplexity comes from the same decoding loop);
* reference: ``model.generate(do_sample=True, ...)`` one sample at a time (batch 1, KV cache),
  each started from the model's document start, ``min_new_tokens = max_new_tokens`` so every
  sample has the same length. One sample at a time runs at the same rate whatever their number,
  so only ``--reference-samples`` of them are timed (all ``n`` with ``--reference-samples 0``).

Each side first runs a short untimed warm-up (the first forward passes of a process pay for
kernel selection and memory growth). Prints generated tokens per second of each and the ratio; results go to
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
    from prunestudio.core.calib.selfgen import GenerationSettings

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=GenerationSettings.batch_size,
                    help="the generator's batch (default: the product's default)")
    ap.add_argument("--reference-samples", type=int, default=8,
                    help="samples generated one at a time for the reference rate (0: all n)")
    ap.add_argument("--results", default=str(HERE / "results" / "selfgen_throughput.json"))
    a = ap.parse_args()
    os.environ.setdefault("PRUNESTUDIO_CACHE", "/tmp/pscache")
    from prunestudio.core.calib.selfgen import document_start, generate_calibration_set
    from prunestudio.core.model.loading import load_model

    loaded = load_model("demo", "cpu", "fp32")
    model, tok = loaded.model, loaded.tokenizer
    settings = GenerationSettings(n=a.n, seqlen=a.seqlen, drop_top=0.0, batch_size=a.batch_size, seed=0)
    generate_calibration_set(model, tok, GenerationSettings(n=2, seqlen=16, drop_top=0.0, seed=1))  # warm-up
    t0 = time.perf_counter()
    cs = generate_calibration_set(model, tok, settings)
    ours_s = time.perf_counter() - t0
    start, _ = document_start(tok)
    new_per_sample = a.seqlen - len(start)
    ours_tokens = a.n * new_per_sample

    prompt = torch.tensor([start], dtype=torch.long)

    def one_by_one(count: int, new_tokens: int) -> None:
        for _ in range(count):
            model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=0.6,
                           top_p=0.95, top_k=50, repetition_penalty=1.2, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, pad_token_id=tok.pad_token_id or 0)

    torch.manual_seed(0)
    one_by_one(1, 16)  # warm-up
    ref_n = a.n if a.reference_samples <= 0 else min(a.n, a.reference_samples)
    t0 = time.perf_counter()
    one_by_one(ref_n, new_per_sample)
    ref_s = time.perf_counter() - t0
    ref_rate = ref_n * new_per_sample / ref_s
    out = {"n": a.n, "seqlen": a.seqlen, "batch_size": a.batch_size, "samples": len(cs.samples),
           "ours_seconds": ours_s, "ours_tokens_per_s": ours_tokens / ours_s,
           "generate_samples": ref_n, "generate_seconds": ref_s, "generate_tokens_per_s": ref_rate,
           "speedup": (ours_tokens / ours_s) / ref_rate, "loadavg": os.getloadavg()[0],
           "threads": torch.get_num_threads()}
    print(f"batched generator: {out['ours_tokens_per_s']:.1f} tokens/s ({a.n} samples in {ours_s:.1f} s, "
          f"per-sample perplexity included); model.generate one by one: {ref_rate:.1f} tokens/s "
          f"({ref_n} samples in {ref_s:.1f} s); speed-up {out['speedup']:.2f}x (load avg {out['loadavg']:.1f})")
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
