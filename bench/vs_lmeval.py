"""Prune Studio's zero-shot scorer against lm-evaluation-harness on the same model and items.

    python bench/vs_lmeval.py [--limit 100] [--tasks arc_easy,...] [--lmeval-batch-size 8]
                              [--batch-size 16] [--threads 2] [--probe-batch-sizes 1,8,32]

What it does, in this one process (the project's virtualenv: lm-eval 0.4.13 is its ``dev`` extra,
so no separate environment is built):

1. Loads the default model the way the project resolves ``demo`` (``core/model/loading.resolve_spec``:
   the catalogue's cache folder with ``model.safetensors``), float32 on the CPU.
2. Writes, for each task, the first ``--limit`` items of our local file (``../shared/data/eval``,
   the file ``core/evaluate/task_data`` reads) in the schema of the hub data set lm-eval uses, and a
   task config that ``include``s lm-eval's own task YAML (its prompt, target, choices, metrics,
   HellaSwag's and WinoGrande's own functions) and points it at that file (``bench/.work/lmeval_tasks``).
   WinoGrande's local file is llm-foundry's partial-scoring form; the sentence is rebuilt as
   ``prefix + "_ " + continuation`` with the options as what follows the two contexts' common
   prefix, which gives lm-eval the same context strings and the same target.
3. lm-eval: ``HFLM(pretrained=<that folder>, dtype=float32, device=cpu, batch_size=B)`` and
   ``simple_evaluate`` with those task configs, ``num_fewshot=0``, ``log_samples=True``. Timed end to
   end and, separately, inside ``HFLM.loglikelihood`` (the scoring alone): ``time_ratio`` uses the
   scoring alone, the fairer figure for lm-eval.
4. Ours: ``iter_evaluate_items`` on the same items, timed the same way (tokenising and scoring).
5. Per task: acc and acc_norm of both and their difference in points, and the largest difference
   between the two tools' log-likelihoods of any choice (from lm-eval's logged samples).
6. The work each side asks of the model, counted at its forward (``WorkCounter``: tokens through
   the blocks, padding included, and positions given to the output head, in FLOPs): ``work_ratio``
   beside ``time_ratio`` says whether a side is faster by doing less or by running faster.

``--probe-batch-sizes`` first times lm-eval's scoring on a few items per task at each batch size
given and then uses the fastest for the real run (report says which). The last line printed is
one JSON object; ``--out`` saves it too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data" / "eval"
WORK = HERE / ".work" / "lmeval_tasks"
TASKS = ("arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande")
ACC_ONLY = {"winogrande"}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ------------------------------------------------------------------------------------------------
# Task files for lm-eval: our local rows in the hub's schema, and configs that include lm-eval's own
# ------------------------------------------------------------------------------------------------
def _jsonl(path: Path, limit: int) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) >= limit:
                break
    return rows


def hub_rows(task: str, limit: int) -> tuple[list[dict], str]:
    """The first ``limit`` rows of our local file for ``task``, in the hub schema lm-eval reads,
    and the split name lm-eval's task config evaluates."""
    from prunestudio.core.evaluate.task_data import find_task_file

    path = find_task_file(task, DATA)
    if task in ("arc_easy", "arc_challenge"):
        rows = []
        for r in _jsonl(path, limit):
            q = r["question"]
            rows.append({"id": r["id"], "question": q["stem"], "answerKey": r["answerKey"],
                         "choices": {"text": [c["text"] for c in q["choices"]],
                                     "label": [c["label"] for c in q["choices"]]}})
        return rows, "test"
    if task == "piqa":
        labels = (path.parent / "valid-labels.lst").read_text(encoding="utf-8").split()
        rows = [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(labels[i])}
                for i, r in enumerate(_jsonl(path, limit))]
        return rows, "validation"
    if task == "hellaswag":
        if path.suffix != ".jsonl":
            raise SystemExit(f"HellaSwag is read from {path}; this script needs the JSONL form.")
        rows = [{"ind": r.get("ind", i), "activity_label": r["activity_label"], "ctx_a": r["ctx_a"],
                 "ctx_b": r["ctx_b"], "ctx": r.get("ctx", ""), "endings": r["endings"],
                 "label": str(r["label"]), "source_id": r.get("source_id", ""),
                 "split": r.get("split", "val"), "split_type": r.get("split_type", "")}
                for i, r in enumerate(_jsonl(path, limit))]
        return rows, "validation"
    if task == "winogrande":
        rows = []
        for r in _jsonl(path, limit):
            if "sentence" in r:
                rows.append({k: r[k] for k in ("sentence", "option1", "option2", "answer")})
                continue
            a, b = r["context_options"]
            n = len(os.path.commonprefix([a, b]))
            if "_" in a[:n]:
                raise SystemExit(f"A WinoGrande context holds '_': {a!r}")
            sentence = a[:n] + "_ " + r["continuation"].strip()
            rows.append({"sentence": sentence, "option1": a[n:], "option2": b[n:],
                         "answer": str(int(r["gold"]) + 1)})
        return rows, "validation"
    raise SystemExit(f"No lm-eval conversion for {task}.")


def lm_eval_yaml(task: str) -> Path:
    import lm_eval

    tasks = Path(lm_eval.__file__).parent / "tasks"
    return {"arc_easy": tasks / "arc" / "arc_easy.yaml", "arc_challenge": tasks / "arc" / "arc_challenge.yaml",
            "piqa": tasks / "piqa" / "piqa.yaml", "hellaswag": tasks / "hellaswag" / "hellaswag.yaml",
            "winogrande": tasks / "winogrande" / "default.yaml"}[task]


def write_task_configs(tasks: list[str], limit: int) -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    for old in WORK.glob("*"):
        old.unlink()
    for task in tasks:
        rows, split = hub_rows(task, limit)
        data = WORK / f"{task}.jsonl"
        with data.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        (WORK / f"{task}_local.yaml").write_text(
            f"include: {json.dumps(str(lm_eval_yaml(task)))}\n"
            f"task: {task}\n"
            "dataset_path: json\n"
            "dataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    {split}: {json.dumps(str(data))}\n"
            "training_split: null\n"
            f"validation_split: {'validation' if split == 'validation' else 'null'}\n"
            f"test_split: {'test' if split == 'test' else 'null'}\n", encoding="utf-8")
    return WORK


# ------------------------------------------------------------------------------------------------
# the two sides
# ------------------------------------------------------------------------------------------------
def run_lmeval(folder: Path, tasks: list[str], limit: int, batch_size: int) -> dict:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(WORK), include_defaults=False)
    lm = HFLM(pretrained=str(folder), dtype="float32", device="cpu", batch_size=batch_size)
    warm_up(lm.model)
    scoring = [0.0]
    real = lm.loglikelihood

    def timed(requests, *args, **kwargs):
        t = time.perf_counter()
        try:
            return real(requests, *args, **kwargs)
        finally:
            scoring[0] += time.perf_counter() - t

    lm.loglikelihood = timed
    counter = WorkCounter(lm.model)
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, num_fewshot=0, task_manager=manager,
                                  log_samples=True, bootstrap_iters=0)
    wall = time.perf_counter() - t0
    work = counter.close()
    res = {}
    for task in tasks:
        r = out["results"][task]
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        res[task] = {"acc": float(r["acc,none"]), "acc_norm": float(r.get("acc_norm,none", r["acc,none"])),
                     "n": len(samples),
                     "lls": [[float(x[0][0]) for x in s["resps"]] for s in samples],
                     "gold": [int(s["target"]) if not isinstance(s["target"], str) else s["target"] for s in samples]}
    return {"tasks": res, "wall_s": wall, "scoring_s": scoring[0], "batch_size": batch_size, "work": work}


class WorkCounter:
    """The work a side asks of the model, counted at the model's forward (a pre-hook): tokens through
    the blocks (padding included) and positions given to the output head (``logits_to_keep`` when
    the call passes it, else every position), turned into FLOPs with the model's sizes
    (:class:`prunestudio.core.model.speed.ModelFacts`: 2 per block weight per token, the attention
    over the row's width, 2 x vocab x hidden per head position)."""

    def __init__(self, model) -> None:
        from prunestudio.core.model.speed import model_facts

        self.facts = model_facts(model)
        self.trunk_tokens = self.head_positions = 0
        self.attention_flops = 0.0
        self.calls = 0
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        rows, width = ids.shape
        past = kwargs.get("past_key_values")
        before = past.get_seq_length() if past is not None and hasattr(past, "get_seq_length") else 0
        keep = kwargs.get("logits_to_keep", 0)
        self.calls += 1
        self.trunk_tokens += rows * width
        self.head_positions += rows * (keep if isinstance(keep, int) and keep > 0 else width)
        # each token attends to the cache and to the tokens before it in its row
        self.attention_flops += 4.0 * self.facts.num_blocks * self.facts.hidden * rows * (
            width * before + width * (width - 1) / 2)

    def close(self) -> dict:
        self._handle.remove()
        f = self.facts
        flops = 2.0 * f.block_params * self.trunk_tokens + self.attention_flops + 2.0 * f.head_params * self.head_positions
        return {"forward_calls": self.calls, "trunk_tokens": self.trunk_tokens, "head_positions": self.head_positions,
                "tflop": flops / 1e12}


def warm_up(model) -> None:
    """One short forward pass, so that neither side's timing holds the first call's set-up."""
    import torch

    with torch.inference_mode():
        model(input_ids=torch.ones((2, 64), dtype=torch.long))


def run_ours(model, tokenizer, tasks: list[str], limit: int, batch_size: int) -> dict:
    from prunestudio.core.evaluate import zeroshot
    from prunestudio.core.evaluate.task_data import load_task
    from prunestudio.core.events import run_to_completion

    warm_up(model)
    counter = WorkCounter(model)
    res = {}
    scoring = 0.0
    t0 = time.perf_counter()
    for task in tasks:
        items = load_task(task, DATA, limit=limit)
        captured: list[list[float]] = []
        real = zeroshot.iter_loglikelihoods

        def spy(*args, **kwargs):
            lls = yield from real(*args, **kwargs)
            captured.append(lls)
            return lls

        zeroshot.iter_loglikelihoods = spy
        try:
            t = time.perf_counter()
            r = run_to_completion(zeroshot.iter_evaluate_items(model, tokenizer, task, items, batch_size))
            scoring += time.perf_counter() - t
        finally:
            zeroshot.iter_loglikelihoods = real
        flat = captured[0]
        lls, k = [], 0
        for item in items:
            lls.append(flat[k : k + item.num_choices])
            k += item.num_choices
        res[task] = {"acc": r.acc, "acc_norm": r.acc_norm, "n": r.n, "lls": lls, "gold": [it.gold for it in items]}
    return {"tasks": res, "wall_s": time.perf_counter() - t0, "scoring_s": scoring, "batch_size": batch_size,
            "work": counter.close()}


def probe_lmeval(folder: Path, tasks: list[str], sizes: list[int], limit: int) -> dict[int, float]:
    write_task_configs(tasks, limit)
    times = {}
    for bs in sizes:
        times[bs] = run_lmeval(folder, tasks, limit, bs)["scoring_s"]
        print(json.dumps({"probe_lmeval_batch_size": bs, "scoring_s": round(times[bs], 2),
                          "load1": os.getloadavg()[0]}), flush=True)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=100, help="first N items of each task (both tools)")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--batch-size", type=int, default=16, help="ours")
    ap.add_argument("--lmeval-batch-size", type=int, default=8)
    ap.add_argument("--probe-batch-sizes", default="", help="e.g. 1,8,32: time lm-eval on a few items first")
    ap.add_argument("--probe-limit", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--order", default="ours,lmeval,ours",
                    help="the runs in order; a side named twice is timed twice and averaged")
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    import torch
    from prunestudio.core.model.loading import load_model, resolve_spec

    torch.set_num_threads(a.threads)
    tasks = [t for t in a.tasks.split(",") if t]
    folder, _gguf, name = resolve_spec("demo")
    loaded = load_model("demo", "cpu", "fp32")
    facts = {"cpu": cpu_name(), "threads": a.threads, "model": name, "folder": str(folder), "limit": a.limit,
             "torch": torch.__version__, "load_at_start": os.getloadavg()}
    import lm_eval
    import transformers

    facts["lm_eval"] = getattr(lm_eval, "__version__", "?")
    facts["transformers"] = transformers.__version__
    print(json.dumps(facts), flush=True)

    probe = {}
    if a.probe_batch_sizes:
        sizes = [int(s) for s in a.probe_batch_sizes.split(",")]
        probe = probe_lmeval(folder, tasks, sizes, a.probe_limit)
        a.lmeval_batch_size = min(probe, key=probe.get)

    write_task_configs(tasks, a.limit)
    sides = {}
    runs: list[dict] = []  # every run in order: a side named twice (e.g. ours,lmeval,ours) is averaged
    for side in a.order.split(","):
        before = os.getloadavg()[0]
        if side == "lmeval":
            sides[side] = run_lmeval(folder, tasks, a.limit, a.lmeval_batch_size)
        else:
            sides[side] = run_ours(loaded.model, loaded.tokenizer, tasks, a.limit, a.batch_size)
        runs.append({"side": side, "wall_s": sides[side]["wall_s"], "scoring_s": sides[side]["scoring_s"],
                     "load1_before": before, "load1_after": os.getloadavg()[0]})
        print(json.dumps(runs[-1]), flush=True)

    def mean_of(side: str, key: str) -> float:
        values = [r[key] for r in runs if r["side"] == side]
        return sum(values) / len(values)

    ours, theirs = sides["ours"], sides["lmeval"]
    table = {}
    for task in tasks:
        o, t = ours["tasks"][task], theirs["tasks"][task]
        diffs = [abs(x - y) for lo, lt in zip(o["lls"], t["lls"], strict=True) for x, y in zip(lo, lt, strict=True)]
        rel = [abs(x - y) / max(abs(y), 1e-9) for lo, lt in zip(o["lls"], t["lls"]) for x, y in zip(lo, lt)]
        # items where the two tools pick different answers (by summed or per-character score)
        argmax = lambda v: max(range(len(v)), key=lambda i: (v[i], -i))  # noqa: E731
        flips = sum(argmax(lo) != argmax(lt) for lo, lt in zip(o["lls"], t["lls"]))
        table[task] = {
            "n": o["n"], "lmeval_n": t["n"],
            "ours_acc": o["acc"], "lmeval_acc": t["acc"],
            "ours_acc_norm": o["acc_norm"], "lmeval_acc_norm": t["acc_norm"],
            "acc_diff_points": round(100 * (o["acc"] - t["acc"]), 3),
            "acc_norm_diff_points": round(100 * (o["acc_norm"] - t["acc_norm"]), 3),
            "max_abs_ll_diff": max(diffs), "max_rel_ll_diff": max(rel), "argmax_flips": flips,
            # WinoGrande's lm-eval target is the shared continuation text, not an index
            "same_gold": None if task == "winogrande" else o["gold"] == t["gold"],
        }
    worst = max(max(abs(r["acc_diff_points"]), abs(r["acc_norm_diff_points"])) for r in table.values())
    result = {
        "bench": "vs_lmeval", **facts, "tasks": table,
        "ours_batch_size": a.batch_size, "lmeval_batch_size": a.lmeval_batch_size,
        "lmeval_batch_probe_scoring_s": probe,
        "ours_scoring_s": mean_of("ours", "scoring_s"), "ours_wall_s": mean_of("ours", "wall_s"),
        "lmeval_scoring_s": mean_of("lmeval", "scoring_s"), "lmeval_wall_s": mean_of("lmeval", "wall_s"),
        "time_ratio": mean_of("ours", "scoring_s") / mean_of("lmeval", "scoring_s"),
        "time_ratio_end_to_end": mean_of("ours", "wall_s") / mean_of("lmeval", "wall_s"),
        "worst_diff_points": worst, "within_half_point": worst <= 0.5,
        # the work each side asked of the model (the same on every run of a side): if the time ratio
        # is near the work ratio, both run at the same FLOP rate and only less work can go faster
        "ours_work": ours["work"], "lmeval_work": theirs["work"],
        "work_ratio": ours["work"]["tflop"] / theirs["work"]["tflop"],
        "order": a.order, "runs": runs, "load_at_end": os.getloadavg(),
    }
    line = json.dumps(result)
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
