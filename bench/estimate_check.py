"""Time a few short jobs on the demo model and set them beside core/run/estimate.py's estimates.

``python bench/estimate_check.py [--quick]``: the machine's probe, then a short self-generation, a
perplexity on WikiText-2 windows, a zero-shot task and two short pruning runs, each measured and
estimated; prints one JSON line per job (measured and estimated seconds and their ratio). The
machine's CPU and load average are printed first: on a shared machine the ratios move.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from prunestudio.core.calib.selfgen import GenerationSettings, iter_generate
from prunestudio.core.config import CalibConfig, PruneConfig
from prunestudio.core.evaluate.perplexity import eval_ids, iter_perplexity
from prunestudio.core.evaluate.zeroshot import iter_zeroshot
from prunestudio.core.events import ModulePruned, run_to_completion
from prunestudio.core.model.speed import cpu_model, machine_speed, model_facts
from prunestudio.core.prune.pipeline import iter_prune
from prunestudio.core.run import estimate
from prunestudio.core.run.load import LoadArgs, iter_load

DATA = os.environ.get("PRUNESTUDIO_EVAL_DATA") or os.path.join(os.path.dirname(__file__), "..", "shared", "data")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="probe,selfgen,ppl,zeroshot,wanda,sparsegpt")
    ap.add_argument("--dtype", default="float32", help="the model's dtype: float32 or bfloat16")
    ap.add_argument("--calib", default="16x512", help="pruning calibration, NSAMPLESxSEQLEN")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(json.dumps({"cpu": cpu_model(), "load": os.getloadavg(), "threads": a.threads}), flush=True)
    loaded = run_to_completion(iter_load(LoadArgs("demo", device="cpu", dtype=a.dtype)))
    model, tok = loaded.model, loaded.tokenizer
    facts = model_facts(model)
    speed = machine_speed("cpu", facts.dtype)
    print(json.dumps({"probe_gflops": speed.flops / 1e9, "probed": speed.probed, "params": facts.params,
                      "block_params": facts.block_params}), flush=True)
    only = a.only.split(",")

    def report(name: str, seconds: float, est: estimate.Estimate) -> None:
        print(json.dumps({"job": name, "measured_s": round(seconds, 1), "estimated_s": round(est.seconds, 1),
                          "measured_over_estimate": round(seconds / est.seconds, 2) if est.seconds else None,
                          "load": os.getloadavg()[0]}), flush=True)

    for n, L in ((8, 64), (32, 128)):
        if "selfgen" not in only:
            break
        cal = CalibConfig(source="selfgen", nsamples=n, seqlen=L, drop_top=0.0)
        t = time.perf_counter()
        run_to_completion(iter_generate(model, tok, GenerationSettings(n=n, seqlen=L, drop_top=0.0, batch_size=32)))
        report(f"selfgen {n}x{L}", time.perf_counter() - t, estimate.selfgen(facts, speed, cal))
    if "ppl" in only:
        ids = eval_ids(tok, "wikitext2", 512, data_dir=DATA)
        t = time.perf_counter()
        run_to_completion(iter_perplexity(model, ids, 512, max_windows=8))
        report("ppl 8x512", time.perf_counter() - t, estimate.perplexity(facts, speed, 8 * 512, 512))
        print(json.dumps({"wikitext2_tokens": int(ids.numel())}), flush=True)
    if "zeroshot" in only:
        t = time.perf_counter()
        run_to_completion(iter_zeroshot(model, tok, ["piqa"], data_dir=os.path.join(DATA, "eval"), limit=50))
        report("zeroshot piqa 50", time.perf_counter() - t, estimate.zeroshot(facts, speed, ["piqa"], 50))
    g = torch.Generator().manual_seed(0)
    ns, sl = (int(v) for v in a.calib.split("x"))
    calib = torch.randint(0, facts.vocab, (ns, sl), generator=g)
    for method in ("magnitude", "wanda", "sparsegpt"):
        if method not in only:
            continue
        cfg = PruneConfig(method=method)
        fresh = run_to_completion(iter_load(LoadArgs("demo", device="cpu", dtype=a.dtype))).model
        module_s = 0.0
        t = time.perf_counter()
        # previews on, as in the app: the per-module work then includes the heatmap's numbers
        for ev in iter_prune(fresh, calib, cfg, previews=True):
            if isinstance(ev, ModulePruned):
                module_s += ev.seconds
        seconds = time.perf_counter() - t
        est = estimate.pruning(facts, speed, cfg, ns, sl)
        report(f"{method} {ns}x{sl} ({'one' if cfg.passes_once else 'two'} pass)", seconds, est)
        # the per-module work (scores, masks, updates, counts, previews) and the rest (forward
        # passes, statistics), measured and estimated apart
        print(json.dumps({"job": method, "module_s": round(module_s, 2), "rest_s": round(seconds - module_s, 2),
                          "estimated_module_s": round(est.module_seconds, 2),
                          "estimated_rest_s": round(est.seconds - est.module_seconds, 2),
                          "weights": facts.block_params}), flush=True)
        del fresh


if __name__ == "__main__":
    main()
