"""The paper's self-generation protocol: rows that end leave the batch, against the batch decoded
until its longest sample ends, in one run.

    PRUNESTUDIO_EVAL_DATA=../shared/data python bench/selfgen_paper.py [--nsamples 16] [--seqlen 512]
        [--seed 0] [--prefixes C4_FILE] [--dtype fp32]

The paper's protocol (Ji et al., ICLR 2025; ``core/calib/selfgen/paper.py``) continues 2-token
prefixes of real text until the model writes end-of-text, so a batch's samples end at very different
lengths (on the demo model about a third of the row-steps of a batch decoded to its longest sample
are tokens that are kept). The demo model builds the same calibration set (``nsamples`` windows of
``seqlen`` tokens, prefixes from the first 1,000 C4 documents, the product's default batch) twice,
as a run builds it (``core.run.calibration.build_calibration``):

* **whole batch**: every row stays in the batch until the last one ends (the loop before this
  change: ``sampler._compactable`` answers no);
* **compacting**: the product: rows that are done leave the batch, with their cache rows, once they
  are a quarter of it (``sampler._compacting``).

Printed for each: seconds, tokens kept per second (the samples' own tokens), decoding steps and
row-steps (rows computed, summed over the steps: the work), and whether the two sets are the same
(every window's tokens; the samples' perplexities to 1e-5). The last line is one JSON object, also
written to ``--results`` (default bench/results/selfgen_paper.json).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("PRUNESTUDIO_EVAL_DATA") or HERE.parent.parent / "shared" / "data")
C4 = DATA / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl.gz"


def cpu_detail() -> str:
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("model name", "cpu family", "model", "flags") and k.strip() not in fields:
                fields[k.strip()] = v.strip()
            if not line.strip():
                break
    except OSError:
        return ""
    bf16 = "avx512_bf16" in fields.get("flags", "").split()
    return (f"{fields.get('model name', '?')}, family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"
            f"{', avx512_bf16' if bf16 else ''}")


def build(loaded, cal, compacting: bool) -> dict:
    from prunestudio.core.calib.selfgen import sampler
    from prunestudio.core.events import run_to_completion
    from prunestudio.core.run.calibration import build_calibration

    steps = [0, 0]  # decoding forwards, rows computed by them

    def count(_m, _a, kw):
        ids = kw.get("input_ids")
        if ids is not None and ids.shape[1] == 1:
            steps[0] += 1
            steps[1] += int(ids.shape[0])

    real = sampler._compactable
    if not compacting:
        sampler._compactable = lambda past: False
    hook = loaded.model.register_forward_pre_hook(count, with_kwargs=True)
    load = os.getloadavg()[0]
    try:
        t0 = time.perf_counter()
        cs = run_to_completion(build_calibration(loaded, cal))
        seconds = time.perf_counter() - t0
    finally:
        hook.remove()
        sampler._compactable = real
    docs = cs.settings["documents"]
    kept = sum(d["tokens"] for d in docs)
    return {"seconds": seconds, "samples": len(docs), "sample_tokens": kept, "tokens_per_s": kept / seconds,
            "decode_steps": steps[0], "row_steps": steps[1], "useful_fraction": kept / max(steps[1], 1),
            "loadavg": load, "windows": [list(s.input_ids) for s in cs.samples],
            "ppl": [d["perplexity"] for d in docs]}


def main() -> None:
    from prunestudio.core.calib.selfgen import GenerationSettings
    from prunestudio.core.config import CalibConfig
    from prunestudio.core.model import threads
    from prunestudio.core.model.loading import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prefixes", default=str(C4))
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--results", default=str(HERE / "results" / "selfgen_paper.json"))
    a = ap.parse_args()
    if not Path(a.prefixes).exists():
        raise SystemExit(f"no prefix text at {a.prefixes} (set PRUNESTUDIO_EVAL_DATA to the shared data folder)")

    cal = CalibConfig(source=f"selfgen:{a.prefixes}", protocol="paper", nsamples=a.nsamples, seqlen=a.seqlen,
                      seed=a.seed)
    loaded = load_model("demo", "cpu", a.dtype)
    runs = {}
    with threads.job_threads() as choice:
        for name, compacting in (("whole_batch", False), ("compacting", True)):
            runs[name] = build(loaded, cal, compacting)
            r = runs[name]
            print(f"{name}: {r['seconds']:.1f} s, {r['samples']} samples, {r['tokens_per_s']:.1f} kept tokens/s, "
                  f"{r['decode_steps']} steps, {r['row_steps']:,} row-steps ({r['useful_fraction']:.2f} kept), "
                  f"load {r['loadavg']:.2f}", flush=True)
    w, c = runs["whole_batch"], runs["compacting"]
    same = w["windows"] == c["windows"]
    ppl_diff = max((abs(x - y) / y for x, y in zip(c["ppl"], w["ppl"]) if x and y), default=0.0)
    for r in runs.values():
        r.pop("windows"), r.pop("ppl")
    out = {"cpu": cpu_detail(), "threads": choice.threads, "torch": torch.__version__, "dtype": a.dtype,
           "nsamples": a.nsamples, "seqlen": a.seqlen, "seed": a.seed, "batch_size": GenerationSettings.batch_size, "runs": runs,
           "time_ratio": c["seconds"] / w["seconds"], "work_ratio": c["row_steps"] / w["row_steps"],
           "same_windows": same, "max_ppl_rel_diff": ppl_diff}
    print(f"compacting / whole batch: time {out['time_ratio']:.2f}, row-steps {out['work_ratio']:.2f}; "
          f"same windows: {same}, perplexities within {ppl_diff:.1e}", flush=True)
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
