"""Self-generation throughput: our batched generator beside the machine's decode limit and beside
Hugging Face ``generate`` at the same batch size, all measured in one run.

    python bench/selfgen_throughput.py [--n 32] [--seqlen 128] [--batch-size 32] [--dtype fp32,bf16]
                                       [--hf-batches 1] [--breakdown 24] [--app-default]

For each dtype (bf16 only on a CPU with bfloat16 instructions, AVX512-BF16 or AMX; skipped with the
reason elsewhere), on the demo model, with the torch threads the app would take now
(``core.model.threads.job_threads``: the free CPUs), in this order:

* **limit**: the slower of compute and memory for every decoding step of the run, summed over
  the steps. Compute: the step's FLOPs (every block's linear layers, attention over the step's
  context, 4 x hidden per earlier token and block, and the output head over the whole vocabulary;
  ``core.model.speed.ModelFacts``) at the rate of a matrix probe measured now with the same dtype
  and shapes: ``F.linear`` of ``[batch, in]`` by each distinct ``[out, in]`` weight of a block and
  by the head, each timed on its own, best of 5 rounds (weights hot in cache: the compute side only). Memory: the
  bytes a step reads (every weight once, the tied head once, plus the KV cache at the step's
  context) at the better of two bandwidths measured now on 256 MiB tensors: ``copy_``
  (read + write counted) and ``sum`` (read). Tokens per second of the limit = generated tokens /
  that sum.
* **ours**: ``generate_calibration_set`` (zero-data mode, ``drop_top=0``, ``n`` samples of
  ``seqlen`` tokens, batched decoding, per-sample perplexity from the same loop), after a warm-up.
* **HF generate**: ``model.generate`` on batches of the same size (the same document start for
  every sample, with its attention mask; left padding would apply to prompts of unequal length),
  ``do_sample`` with the same temperature, top-p, top-k, repetition penalty and suppressed tokens,
  ``min_new_tokens = max_new_tokens`` so every sample has ``seqlen`` tokens, after a warm-up.
  Only ``--hf-batches`` batches are timed (every batch of a size runs at the same rate).

``--breakdown K`` profiles K decoding steps of ours (torch profiler) and prints where a step's time
goes: the linear layers' matrix products, attention, the sampling (logits processing on the
vocabulary), the rest of the model's operators, and the time outside any operator (Python).
``--app-default`` also times the app's default self-generated set (64 windows of 512 tokens kept
after dropping the 20% with the highest perplexity: 79 generated, the default batch) in fp32.

The last line is one JSON object: the fp32 figures at the top level (``tokens_per_s``,
``limit_tokens_per_s``, ``hf_generate_tokens_per_s``, ``ratio_vs_limit``, ``ratio_vs_hf``,
``dtype``, ``cpu``, ``batch_size``, ``seqlen``, ``n``, ``loadavg``, ``threads``, ...) and every
dtype's in ``runs``. Results go to bench/results/selfgen_throughput.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_family_model() -> str:
    """``family F model M`` from /proc/cpuinfo (a vendor's generic "model name" does not say)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("cpu family", "model", "vendor_id") and k.strip() not in fields:
                fields[k.strip()] = v.strip()
            if not line.strip():
                break
    except OSError:
        return ""
    return f"{fields.get('vendor_id', '')} family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"


def bf16_skip_reason() -> str | None:
    """None when the CPU has bfloat16 instructions, else why bf16 is not measured."""
    from prunestudio.core.model.devices import slow_dtype_warning

    flags = cpu_flags()
    if flags & {"avx512_bf16", "amx_bf16"}:
        return None
    why = slow_dtype_warning(torch.device("cpu"), torch.bfloat16)
    cap = torch.backends.cpu.get_cpu_capability()
    return why or f"no avx512_bf16 or amx_bf16 in /proc/cpuinfo (torch CPU capability {cap})"


# ------------------------------------------------------------------------------------------------
# the limit
# ------------------------------------------------------------------------------------------------
def time_linear(rows: int, out_f: int, in_f: int, dtype: torch.dtype, rounds: int = 5,
                seconds: float = 0.06) -> float:
    """Seconds of one ``F.linear([rows, in_f], [out_f, in_f])`` in ``dtype`` (weights hot): the best
    of ``rounds`` rounds of at least ``seconds`` each (a probe on a shared machine takes its best)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_f, generator=g).to(dtype)
    w = torch.randn(out_f, in_f, generator=g).to(dtype)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(2):
            F.linear(x, w)
        for _ in range(rounds):
            n, t0 = 0, time.perf_counter()
            while True:
                F.linear(x, w)
                n += 1
                el = time.perf_counter() - t0
                if n >= 2 and el >= seconds:
                    break
            best = min(best, el / n)
    return best


def bandwidth(dtype: torch.dtype, mib: int = 256, repeats: int = 5) -> dict[str, float]:
    """Bytes per second of ``copy_`` (read + write) and ``sum`` (read) over ``mib`` MiB, best of
    ``repeats``."""
    n = mib * 2 ** 20 // torch.finfo(dtype).bits * 8
    a = torch.ones(n, dtype=dtype)
    b = torch.empty_like(a)
    best_copy = best_sum = float("inf")
    with torch.inference_mode():
        b.copy_(a)
        a.sum()
        for _ in range(repeats):
            t = time.perf_counter()
            b.copy_(a)
            best_copy = min(best_copy, time.perf_counter() - t)
            t = time.perf_counter()
            a.sum()
            best_sum = min(best_sum, time.perf_counter() - t)
    size = a.numel() * a.element_size()
    return {"copy": 2 * size / best_copy, "sum": size / best_sum}


def decode_limit(model, batch: int, prompt_len: int, seqlen: int, dtype: torch.dtype) -> dict:
    """The decode limit of the run: per step, the slower of compute and memory (see the module
    docstring), summed over the ``seqlen - prompt_len`` steps of a batch."""
    from prunestudio.core.model import memory
    from prunestudio.core.model.speed import model_facts

    facts = model_facts(model)
    shapes: dict[tuple[int, int], int] = {}
    for o, i in facts.block_linears:
        shapes[(o, i)] = shapes.get((o, i), 0) + facts.num_blocks
    per_shape = {s: time_linear(batch, s[0], s[1], dtype) for s in shapes}
    head_s = time_linear(batch, facts.vocab, facts.hidden, dtype)
    linear_s = sum(per_shape[s] * c for s, c in shapes.items()) + head_s
    linear_flops = batch * (2.0 * facts.block_params + 2.0 * facts.head_params)
    rate = linear_flops / linear_s  # the probe's FLOP/s at these shapes
    bw = bandwidth(dtype)
    bytes_per_s = max(bw.values())
    elem = torch.finfo(dtype).bits // 8
    weight_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    kv_token = memory.kv_cache_bytes_per_token(model.config, elem) or 0
    steps = seqlen - prompt_len
    total = compute_total = memory_total = 0.0
    flops_total = bytes_total = 0.0
    for s in range(steps):
        ctx = prompt_len + s  # tokens before the one this step's forward computes
        flops = batch * facts.forward_flops_per_token(ctx)
        attn = flops - linear_flops
        c = linear_s + attn / rate
        nbytes = weight_bytes + batch * (ctx + 1) * kv_token
        m = nbytes / bytes_per_s
        total += max(c, m)
        compute_total += c
        memory_total += m
        flops_total += flops
        bytes_total += nbytes
    tokens = batch * steps
    return {
        "limit_tokens_per_s": tokens / total,
        "compute_limit_tokens_per_s": tokens / compute_total,
        "memory_limit_tokens_per_s": tokens / memory_total,
        "bound": "compute" if compute_total >= memory_total else "memory",
        "probe_gflops": rate / 1e9,
        "probe_seconds_by_shape": {f"{batch}x{i}->{o}": t for (o, i), t in per_shape.items()}
        | {f"{batch}x{facts.hidden}->{facts.vocab} (head)": head_s},
        "copy_gb_per_s": bw["copy"] / 1e9,
        "sum_gb_per_s": bw["sum"] / 1e9,
        "step_gflops_mean": flops_total / steps / 1e9,
        "step_mb_read_mean": bytes_total / steps / 1e6,
        "weight_mb": weight_bytes / 1e6,
        "kv_cache_kb_per_token": kv_token / 1e3,
    }


# ------------------------------------------------------------------------------------------------
# ours, HF, and where a step's time goes
# ------------------------------------------------------------------------------------------------
class _TransformersAttention:
    """In place of ``sampler.decode_attention``: decoding with the model's own attention (the
    sampler before the folded-heads kernel), for ``--compare-attention``."""

    def __init__(self, model) -> None:
        pass

    def __enter__(self) -> bool:
        return False

    def __exit__(self, *exc) -> bool:
        return False


def run_ours(model, tok, n: int, seqlen: int, batch: int, own_attention: bool = False) -> tuple[float, int, str]:
    """Seconds, generated tokens and a hash of every sample's tokens. ``own_attention``: decode
    with transformers' attention instead of :mod:`prunestudio.core.model.attention`'s."""
    import hashlib

    from prunestudio.core.calib.selfgen import GenerationSettings, document_start, generate_calibration_set
    from prunestudio.core.calib.selfgen import sampler

    if own_attention:
        real, sampler.decode_attention = sampler.decode_attention, _TransformersAttention
        try:
            return run_ours(model, tok, n, seqlen, batch)
        finally:
            sampler.decode_attention = real

    generate_calibration_set(model, tok, GenerationSettings(n=min(4, batch), seqlen=16, drop_top=0.0,
                                                            batch_size=batch, seed=1))  # warm-up
    st = GenerationSettings(n=n, seqlen=seqlen, drop_top=0.0, batch_size=batch, seed=0)
    t0 = time.perf_counter()
    cs = generate_calibration_set(model, tok, st)
    seconds = time.perf_counter() - t0
    start, _ = document_start(tok)
    assert all(len(s.input_ids) == seqlen for s in cs.samples)
    digest = hashlib.sha256(str([list(s.input_ids) for s in cs.samples]).encode()).hexdigest()[:16]
    return seconds, n * (seqlen - len(start)), digest


def run_hf(model, tok, sizes: list[int], seqlen: int) -> tuple[float, int]:
    from prunestudio.core.calib.selfgen import GenerationSettings, document_start, suppressed_token_ids

    st = GenerationSettings()
    start, _ = document_start(tok)
    sup = suppressed_token_ids(model, tok, start[-1])
    pad = tok.pad_token_id if tok.pad_token_id is not None else (sup[0] if sup else 0)

    def generate(bsz: int, new: int) -> None:
        ids = torch.tensor([start] * bsz, dtype=torch.long)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                             temperature=st.temperature, top_p=st.top_p, top_k=st.top_k,
                             repetition_penalty=st.repetition_penalty, suppress_tokens=sup,
                             max_new_tokens=new, min_new_tokens=new, pad_token_id=pad)
        assert out.shape == (bsz, len(start) + new)

    torch.manual_seed(0)
    with torch.inference_mode():
        generate(min(4, sizes[0]), 8)  # warm-up
        t0 = time.perf_counter()
        for bsz in sizes:
            generate(bsz, seqlen - len(start))
        seconds = time.perf_counter() - t0
    return seconds, sum(sizes) * (seqlen - len(start))


_ATTN = ("attention", "sdpa", "bmm", "baddbmm")
_SAMPLING = ("topk", "sort", "logsumexp", "softmax", "cumsum", "searchsorted", "index_fill", "scatter",
             "gather", "clone")


def breakdown(model, tok, batch: int, steps: int, length: int) -> dict:
    """Where the time of ``steps`` decoding steps of ours goes (torch profiler, this thread)."""
    from torch.profiler import ProfilerActivity, profile

    from prunestudio.core.calib.selfgen import GenerationSettings, document_start, iter_sample_tokens, \
        suppressed_token_ids
    from prunestudio.core.calib.selfgen.sampler import _sample_seed

    start, _ = document_start(tok)
    sup = suppressed_token_ids(model, tok, start[-1])
    st = GenerationSettings(n=batch, seqlen=length, batch_size=batch)
    gen = iter_sample_tokens(model, [list(start)] * batch, length, st, [_sample_seed(0, i) for i in range(batch)],
                             suppress=sup, pad_id=tok.pad_token_id or 0)
    # decode up to the last `steps` steps untimed, so the profiled ones see the long contexts
    total = length - len(start)
    for _ in range(max(0, total - steps - 1)):
        next(gen)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        done = 0
        for _ in gen:
            done += 1
        wall = time.perf_counter() - t0
    parts = {"linear (mm)": 0.0, "attention": 0.0, "sampling": 0.0, "other operators": 0.0}
    for ev in prof.key_averages():
        name = ev.key.lower()
        if not name.startswith("aten::"):
            continue
        t = ev.self_cpu_time_total / 1e6
        if name in ("aten::mm", "aten::addmm"):
            parts["linear (mm)"] += t
        elif any(k in name for k in _ATTN):
            parts["attention"] += t
        elif any(k in name for k in _SAMPLING):
            parts["sampling"] += t
        else:
            parts["other operators"] += t
    steps_done = max(done, 1)
    per_step = {k: v / steps_done * 1e3 for k, v in parts.items()}
    per_step["outside operators (Python)"] = max(0.0, wall / steps_done * 1e3 - sum(per_step.values()))
    return {"steps": done, "context_from": length - done - 1, "ms_per_step": per_step,
            "wall_ms_per_step": wall / steps_done * 1e3}


def measure(dtype_name: str, a: argparse.Namespace) -> dict:
    from prunestudio.core.calib.selfgen import document_start
    from prunestudio.core.model import threads
    from prunestudio.core.model.loading import load_model
    from prunestudio.core.model.speed import cpu_model

    dtype = _DTYPES[dtype_name]
    loaded = load_model("demo", "cpu", dtype_name)
    model, tok = loaded.model, loaded.tokenizer
    model.eval()
    start, _ = document_start(tok)
    sizes = [a.batch_size] * (a.n // a.batch_size) + ([a.n % a.batch_size] if a.n % a.batch_size else [])
    hf_sizes = sizes[: a.hf_batches] if a.hf_batches > 0 else sizes
    with threads.job_threads() as choice:
        load0 = os.getloadavg()[0]
        limit = decode_limit(model, a.batch_size, len(start), a.seqlen, dtype)
        print(f"{dtype_name}: limit {limit['limit_tokens_per_s']:.1f} tokens/s ({limit['bound']}-bound: compute "
              f"{limit['compute_limit_tokens_per_s']:.1f} at {limit['probe_gflops']:.1f} GFLOP/s, memory "
              f"{limit['memory_limit_tokens_per_s']:.1f} at {max(limit['copy_gb_per_s'], limit['sum_gb_per_s']):.1f}"
              f" GB/s)", flush=True)
        load1 = os.getloadavg()[0]
        ours_s, ours_tokens, digest = run_ours(model, tok, a.n, a.seqlen, a.batch_size)
        ours = ours_tokens / ours_s
        print(f"{dtype_name}: ours {ours:.1f} tokens/s ({a.n} x {a.seqlen} in {ours_s:.1f} s)", flush=True)
        own = None
        if a.compare_attention:
            own_s, own_tokens, own_digest = run_ours(model, tok, a.n, a.seqlen, a.batch_size, own_attention=True)
            own = {"tokens_per_s": own_tokens / own_s, "seconds": own_s, "same_tokens": own_digest == digest}
            print(f"{dtype_name}: ours with transformers' attention {own['tokens_per_s']:.1f} tokens/s "
                  f"(same tokens: {own['same_tokens']})", flush=True)
        load2 = os.getloadavg()[0]
        hf_s, hf_tokens = run_hf(model, tok, hf_sizes, a.seqlen)
        hf = hf_tokens / hf_s
        print(f"{dtype_name}: HF generate {hf:.1f} tokens/s ({sum(hf_sizes)} x {a.seqlen} at batch "
              f"{a.batch_size} in {hf_s:.1f} s)", flush=True)
        load3 = os.getloadavg()[0]
        bd = breakdown(model, tok, a.batch_size, a.breakdown, a.seqlen) if a.breakdown > 0 else None
        if bd:
            print(f"{dtype_name}: last {bd['steps']} steps, ms per step: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in bd["ms_per_step"].items())
                  + f" (wall {bd['wall_ms_per_step']:.1f})", flush=True)
        out = {
            "dtype": dtype_name, "cpu": cpu_model(), "n": a.n, "seqlen": a.seqlen, "batch_size": a.batch_size,
            "threads": torch.get_num_threads(), "threads_reason": choice.reason,
            "tokens_per_s": ours, "seconds": ours_s, "generated_tokens": ours_tokens,
            "limit_tokens_per_s": limit["limit_tokens_per_s"],
            "hf_generate_tokens_per_s": hf, "hf_seconds": hf_s, "hf_generated_tokens": hf_tokens,
            "ratio_vs_limit": ours / limit["limit_tokens_per_s"], "ratio_vs_hf": ours / hf,
            "limit": limit, "breakdown": bd, "tokens_sha256": digest,
            "ours_with_transformers_attention": own,
            "loadavg": load1, "loadavg_by_phase": {"limit": load0, "ours": load1, "hf": load2, "end": load3},
        }
    del model, loaded
    return out


def app_default(a: argparse.Namespace, batch_size: int | None = None) -> dict:
    """The app's default self-generated set, timed as the app builds it (fp32); ``batch_size``
    replaces the generator's default batch."""
    from prunestudio.core.calib.selfgen import GenerationSettings, generate_calibration_set
    from prunestudio.core.config import CalibConfig
    from prunestudio.core.model import threads
    from prunestudio.core.model.loading import load_model
    from prunestudio.core.run.calibration import _n_before_filter

    cal = CalibConfig()
    n = _n_before_filter(cal.nsamples, cal.drop_top)
    st = GenerationSettings(n=n, seqlen=cal.seqlen, drop_top=cal.drop_top, seed=cal.seed)
    if batch_size is not None:
        st = dataclasses.replace(st, batch_size=batch_size)
    loaded = load_model("demo", "cpu", "fp32")
    model, tok = loaded.model, loaded.tokenizer
    load = os.getloadavg()[0]
    with threads.job_threads() as choice:  # what the app's job would take now
        t0 = time.perf_counter()
        cs = generate_calibration_set(model, tok, st)
        seconds = time.perf_counter() - t0
    kept = sum(not s.dropped for s in cs.samples)
    print(f"app default set: {n} x {cal.seqlen} generated, {kept} kept, batch {st.batch_size}, in {seconds:.1f} s",
          flush=True)
    return {"generated": n, "kept": kept, "seqlen": cal.seqlen, "batch_size": st.batch_size, "seconds": seconds,
            "threads": choice.threads, "loadavg": load, "loadavg_end": os.getloadavg()[0],
            "tokens": [list(s.input_ids) for s in cs.samples]}


def main() -> None:
    from prunestudio.core.calib.selfgen import GenerationSettings

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=GenerationSettings.batch_size,
                    help="the batch of both generators (default: the product's default)")
    ap.add_argument("--dtype", default="fp32,bf16")
    ap.add_argument("--hf-batches", type=int, default=1, help="HF batches timed (0: all, as many as ours)")
    ap.add_argument("--breakdown", type=int, default=0, help="profile this many of our last decoding steps")
    ap.add_argument("--compare-attention", action="store_true",
                    help="also time ours decoding with transformers' own attention (before the folded heads)")
    ap.add_argument("--app-default", action="store_true", help="also time the app's default set (fp32)")
    ap.add_argument("--app-default-batches", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="time the app's default set at each of these batch sizes (e.g. 64,80), in turn")
    ap.add_argument("--results", default=str(HERE / "results" / "selfgen_throughput.json"))
    a = ap.parse_args()

    runs: list[dict] = []
    for name in [d.strip() for d in a.dtype.split(",") if d.strip()]:
        if name == "bf16":
            why = bf16_skip_reason()
            if why:
                print(f"bf16: skipped. {why}", flush=True)
                runs.append({"dtype": "bf16", "skipped": why})
                continue
        runs.append(measure(name, a))
        r = runs[-1]
        print(f"{name}: ours / limit {r['ratio_vs_limit']:.2f}, ours / HF generate {r['ratio_vs_hf']:.2f} "
              f"(threads {r['threads']}, load avg {r['loadavg']:.2f}, {r['cpu']})", flush=True)
    measured = [r for r in runs if "skipped" not in r]
    top = dict(next((r for r in measured if r["dtype"] == "fp32"), measured[0] if measured else {}))
    top.update(runs=runs, cpu_detail=cpu_family_model(), cpu_flags_bf16=sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile"}),
               torch_cpu_capability=torch.backends.cpu.get_cpu_capability(), torch=torch.__version__)
    if a.app_default:
        sets = [app_default(a, b) for b in a.app_default_batches] if a.app_default_batches else [app_default(a)]
        for r in sets[1:]:  # the same samples as the first batch size's, token for token?
            r["same_samples_as_first"] = sum(x == y for x, y in zip(r["tokens"], sets[0]["tokens"]))
        for r in sets:
            r.pop("tokens")
        top["app_default_set"] = sets[0]
        if len(sets) > 1:
            top["app_default_sets"] = sets
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results).write_text(json.dumps(top, indent=2) + "\n")
    print(json.dumps(top))


if __name__ == "__main__":
    main()
