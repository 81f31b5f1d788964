"""Does a change keep what the program computes? Two cells of the methods table, hashed.

    python bench/same_weights.py --save bench/results/same_weights_before.json   # on the old tree
    python bench/same_weights.py --against bench/results/same_weights_before.json

Runs Wanda 50% (two passes) and SparseGPT 2:4 (one pass) on the default model exactly as
``bench/methods_table.py`` does (C4 calibration 64 x 512, seed 0, CPU, float32), but with the
WikiText-2 evaluation cut to its first 8 windows, and exports each pruned model. Prints, per cell,
the SHA-256 of every exported tensor (name, dtype, shape and bytes, in name order) and the
perplexities. ``--against`` compares with a file written by ``--save`` and exits 1 on any
difference: the weights must be bit-identical and the perplexities equal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
C4 = DATA / "c4" / "c4-en-train.00000-of-01024.first1000.jsonl.gz"
WIKI = DATA / "wikitext-2" / "wiki.test.raw"

CELLS = {
    "wanda-50": ["--method", "wanda", "--two-pass", "--sparsity", "0.5"],
    "sparsegpt-2:4": ["--method", "sparsegpt", "--one-pass", "--sparsity", "0.5", "--structure", "2:4"],
}


def tensors_sha256(folder: Path) -> str:
    from safetensors import safe_open

    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in sorted(st.keys()):
                t = st.get_tensor(name).contiguous()
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def run_cell(flags: list[str], work: Path) -> dict:
    exe = Path(sys.executable).with_name("prunestudio")
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "prunestudio.core.cli"]
    out, report = work / "model", work / "report.json"
    cmd = cli + ["prune", "--model", "demo", "--device", "cpu", "--dtype", "fp32", *flags,
                 "--calibration", str(C4), "--nsamples", "64", "--seqlen", "512", "--seed", "0",
                 "--eval-ppl", str(WIKI), "--eval-max-windows", "8", "--out", str(out), "--report", str(report)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PRUNESTUDIO_PPL_CACHE="off")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"cell failed (exit {proc.returncode}): {' '.join(cmd)}")
    r = json.loads(report.read_text())
    return {"tensors_sha256": tensors_sha256(out), "ppl_dense": r["ppl_dense"], "ppl_pruned": r["ppl_pruned"],
            "global_sparsity": r["global_sparsity"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save", help="write the results to this JSON file")
    ap.add_argument("--against", help="compare with a JSON file written by --save; exit 1 on a difference")
    a = ap.parse_args()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    results = {"commit": commit, "cells": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in CELLS.items():
            work = Path(tmp) / name.replace(":", "-")
            work.mkdir()
            results["cells"][name] = res = run_cell(flags, work)
            print(f"{name:<14} sha256 {res['tensors_sha256'][:16]}  ppl dense {res['ppl_dense']:.6f}  "
                  f"pruned {res['ppl_pruned']:.6f}  sparsity {res['global_sparsity']:.6f}", flush=True)
    if a.save:
        Path(a.save).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    same = True
    if a.against:
        ref = json.loads(Path(a.against).read_text())
        for name, res in results["cells"].items():
            old = ref["cells"].get(name)
            ok = old is not None and all(old[k] == res[k] for k in res)
            same &= ok
            print(f"{name:<14} {'identical to' if ok else 'DIFFERS from'} {ref.get('commit')}")
    print(json.dumps({**results, "identical": same if a.against else None}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
