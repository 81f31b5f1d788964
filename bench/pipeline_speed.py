"""Before/after timing of the pruning pipeline: this working tree against a git revision.

    python bench/pipeline_speed.py [--ref HEAD] [--nsamples 16] [--seqlen 512] [--repeats 2]

The revision's ``core/`` is extracted with ``git archive`` into a temporary folder and imported
instead of the working tree's (``PYTHONPATH``); both prune the demo model (float32, CPU) with the
same calibration windows, alternately, each run in a fresh process. Prints the wall time of
``iter_prune`` for each and the ratio (new / old), and each process's peak resident memory
(``ru_maxrss``), for Wanda and SparseGPT, unstructured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

WORKER = r"""
import json, resource, sys, time, torch
from prunestudio.core.config import PruneConfig
from prunestudio.core.model.loading import load_model
from prunestudio.core.events import run_to_completion
from prunestudio.core.prune.pipeline import iter_prune
import prunestudio.core.prune.pipeline as p
method, calib = sys.argv[1], sys.argv[2]
ids = torch.tensor(json.load(open(calib))["input_ids"], dtype=torch.long)
loaded = load_model("demo", "cpu", "fp32")
t = time.perf_counter()
res = run_to_completion(iter_prune(loaded.model, ids, PruneConfig(method=method, sparsity=0.5)))
sd = loaded.model.state_dict()
print(json.dumps({"seconds": time.perf_counter() - t, "file": p.__file__, "gs": res.global_sparsity,
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "checksum": float(sum(v.double().abs().sum() for k, v in sd.items() if ".layers." in k))}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", default="HEAD")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--methods", default="wanda,sparsegpt")
    ap.add_argument("--results", default=str(HERE / "results" / "pipeline_speed.json"))
    a = ap.parse_args()
    os.environ.setdefault("PRUNESTUDIO_CACHE", "/tmp/pscache")
    sys.path.insert(0, str(HERE))
    from prunestudio.core.model.demo import ensure_demo_model
    from vs_llmcompressor import write_calibration

    calib = write_calibration(str(ensure_demo_model()), a.nsamples, a.seqlen)
    tmp = Path(tempfile.mkdtemp(prefix="ps-baseline-"))
    src = tmp / "src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", a.ref, "core"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    (tmp / "root" / "prunestudio").mkdir(parents=True)
    (tmp / "root" / "prunestudio" / "core").symlink_to(src / "core")
    rows: dict = {}
    for method in a.methods.split(","):
        times: dict[str, list[float]] = {"old": [], "new": []}
        rss: dict[str, list[float]] = {"old": [], "new": []}
        sums = {}
        for _ in range(a.repeats):
            for which in ("old", "new"):
                env = dict(os.environ)
                if which == "old":
                    env["PYTHONPATH"] = str(tmp / "root")
                load = os.getloadavg()[0]
                p = subprocess.run([sys.executable, "-c", WORKER, method, str(calib)], capture_output=True,
                                   text=True, env=env, cwd=str(tmp))
                if p.returncode != 0:
                    raise SystemExit(p.stderr[-3000:])
                r = json.loads(p.stdout.strip().splitlines()[-1])
                times[which].append(r["seconds"])
                rss[which].append(r["maxrss_mib"])
                sums[which] = r["checksum"]
                print(f"{method:10s} {which}: {r['seconds']:7.1f} s, peak RSS {r['maxrss_mib']:.0f} MiB "
                      f"(load avg {load:.1f}) {r['file']}", flush=True)
        old, new = statistics.median(times["old"]), statistics.median(times["new"])
        rows[method] = {"old_seconds": times["old"], "new_seconds": times["new"], "ratio_new_over_old": new / old,
                        "old_maxrss_mib": rss["old"], "new_maxrss_mib": rss["new"],
                        "same_weights_checksum": sums["old"] == sums["new"]}
        print(f"{method:10s} median old {old:.1f} s, new {new:.1f} s: new/old {new / old:.2f}; "
              f"identical weight checksum: {sums['old'] == sums['new']}", flush=True)
    from prunestudio.core.model.speed import cpu_model

    out = {"ref": a.ref, "cpu": cpu_model(), "nsamples": a.nsamples, "seqlen": a.seqlen, "runs": rows}
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: round(v["ratio_new_over_old"], 3) for k, v in rows.items()}))


if __name__ == "__main__":
    main()
