"""``prunestudio calib ...``: make and judge calibration sets from the command line.

    prunestudio calib generate --model demo --n 128 --seqlen 512 [--prefix-source none|PATH|hf:...]
                               [--protocol windows|paper] [--prefix-tokens 2] [--temperature 0.6 --top-p 0.95 --top-k 50
                               --repetition-penalty 1.2] [--drop-top 0.2] [--batch-size 32]
                               --seed 0 --out set.jsonl [--device auto --dtype auto]
    prunestudio calib score {set.jsonl|PATH|hf:...} --model demo [--nsamples 64 --seqlen 512 --seed 0]

Progress goes to stderr, results to stdout (the written path for ``generate``, a JSON object for
``score``). Errors are :class:`PruneStudioError` subclasses; the main CLI prints them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Iterable, TextIO

from ..errors import ConfigError
from ..events import Event, Message, PhaseDone, PhaseProgress, PhaseStarted, run_to_completion
from ..run.estimate import PhaseClock


# ------------------------------------------------------------------------------------------------
# a small stderr renderer (one updating line on a terminal, plain lines otherwise)
# ------------------------------------------------------------------------------------------------
class _Progress:
    def __init__(self, quiet: bool = False, verbose: bool = False, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.verbose = verbose
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = ""
        self._t_line = 0.0
        self._clock = PhaseClock()  # each phase's elapsed time and ETA

    def line(self, text: str, final: bool = False) -> None:
        if self.quiet:
            return
        if self.tty:
            pad = max(0, len(self._last) - len(text))
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
            self._last = "" if final else text
        elif final or time.monotonic() - self._t_line > 5.0:
            self.stream.write(text + "\n")
            self._t_line = time.monotonic()
        self.stream.flush()

    def say(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty and self._last:
            self.stream.write("\n")
            self._last = ""
        self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, ev: Event) -> None:
        from ..calib.selfgen import FilteringDone, SampleGenerated

        if isinstance(ev, PhaseStarted):
            self._clock.start(ev.phase, time.perf_counter())
            self.line(f"{ev.phase}: starting" + (f" (0/{ev.total})" if ev.total else ""))
        elif isinstance(ev, PhaseProgress):
            self.line(f"{ev.phase}: {ev.done}/{ev.total} {ev.detail}".rstrip()
                      + f" | {self._clock.text(ev.phase, ev.share, time.perf_counter())}")
        elif isinstance(ev, PhaseDone):
            self.line(f"{ev.phase}: done in {ev.seconds:.1f}s", final=True)
        elif isinstance(ev, SampleGenerated):
            if self.verbose:
                preview = " ".join(ev.text.split())[:100]
                self.say(f"  #{ev.index} ppl {ev.perplexity:.1f}: {preview}")
        elif isinstance(ev, FilteringDone):
            if ev.dropped:
                self.say(f"filter: dropped {len(ev.dropped)} samples with perplexity above {ev.threshold:.2f}")
            else:
                self.say("filter: no sample dropped")
        elif isinstance(ev, Message):
            self.say(("warning: " if ev.level == "warning" else "") + ev.text)


# ------------------------------------------------------------------------------------------------
# argparse
# ------------------------------------------------------------------------------------------------
def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="demo", help="demo or another catalogue model (fetch-model --list), "
                   "a model folder, a .gguf file, or a hub id (owner/name)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", help="auto, fp32, bf16 or fp16")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run Python code shipped with the model (only for models you trust)")


def register(subparsers: Any) -> None:
    """Add ``calib generate`` and ``calib score`` to the main CLI's subparsers."""
    from ..calib.selfgen import PROTOCOLS, GenerationSettings

    d = GenerationSettings()
    calib = subparsers.add_parser("calib", help="generate or score calibration sets")
    sub = calib.add_subparsers(dest="calib_command", metavar="{generate,score}")
    sub.required = True

    g = sub.add_parser(
        "generate", help="let the model write its own calibration set (self-generated data)",
        description="Self-generated calibration data (Ji et al., ICLR 2025): the model continues short "
                    "prefixes by sampling, and the samples with the highest perplexity are dropped.",
    )
    _model_args(g)
    g.add_argument("--protocol", choices=PROTOCOLS, default=d.protocol,
                   help="windows (default): every sample is one window of --seqlen tokens, end-of-text never "
                        "sampled (zero-data without --prefix-source); paper (Ji et al.): 2-token prefixes from "
                        "--prefix-source, samples that may end at end-of-text, the --drop-top highest-perplexity "
                        "ones dropped, the rest joined and cut into --n windows")
    g.add_argument("--n", type=int, default=d.n,
                   help=f"windows protocol: samples to generate before filtering; paper protocol: windows "
                        f"cut from the joined samples (default {d.n})")
    g.add_argument("--seqlen", type=int, default=d.seqlen, help=f"tokens per sample (default {d.seqlen})")
    g.add_argument("--prefix-source", default="none",
                   help="none (zero-data: the model writes everything), a text file, or hf:NAME[:CONFIG[:SPLIT]]")
    g.add_argument("--prefix-tokens", type=int, default=d.prefix_tokens,
                   help=f"tokens taken from each source text (default {d.prefix_tokens})")
    g.add_argument("--temperature", type=float, default=d.temperature)
    g.add_argument("--top-p", type=float, default=d.top_p)
    g.add_argument("--top-k", type=int, default=d.top_k, help="0 disables top-k")
    g.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty)
    g.add_argument("--drop-top", type=float, default=d.drop_top,
                   help=f"fraction of samples with the highest perplexity to drop (default {d.drop_top})")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"sequences decoded together (default {d.batch_size}; fewer when their KV cache "
                        "would not fit in a quarter of the free memory)")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--out", required=True, help="where to write the set (.jsonl)")
    g.set_defaults(handler=_cmd_generate)

    s = sub.add_parser("score", help="Min-K%%++ and perplexity of a calibration set under a model",
                       description="How much a calibration set looks like the model's training data: "
                                   "Min-K%%++ (higher: more similar) and perplexity.")
    s.add_argument("source", help="a saved set (.jsonl), a text file, or hf:NAME[:CONFIG[:SPLIT]]")
    _model_args(s)
    s.add_argument("--nsamples", type=int, default=64, help="windows sampled from a text source (default 64)")
    s.add_argument("--seqlen", type=int, default=512, help="tokens per window from a text source (default 512)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--k", type=float, default=0.2, help="Min-K%%++ fraction of lowest-scoring tokens (default 0.2)")
    s.add_argument("--batch-size", type=int, default=8)
    s.set_defaults(handler=_cmd_score)


# ------------------------------------------------------------------------------------------------
# handlers
# ------------------------------------------------------------------------------------------------
def _load(args: argparse.Namespace) -> Any:
    from ..model.loading import load_model

    loaded = load_model(args.model, device=args.device or "auto", dtype=args.dtype or "auto",
                        trust_remote_code=bool(getattr(args, "trust_remote_code", False)))
    # Generation and scoring run the whole model: put it on the compute device.
    if loaded.device.type != "cpu":
        loaded.model.to(loaded.device)
    return loaded


def _progress(args: argparse.Namespace) -> _Progress:
    return _Progress(quiet=bool(getattr(args, "quiet", False)), verbose=bool(getattr(args, "verbose", False)))


def _fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _cmd_generate(args: argparse.Namespace) -> int:
    from ..calib.selfgen import GenerationSettings, iter_generate

    settings = GenerationSettings(
        n=args.n, seqlen=args.seqlen, prefix_tokens=args.prefix_tokens, temperature=args.temperature,
        top_p=args.top_p, top_k=args.top_k, repetition_penalty=args.repetition_penalty,
        drop_top=args.drop_top, batch_size=args.batch_size, seed=args.seed, protocol=args.protocol,
    )
    src = (args.prefix_source or "none").strip()
    progress = _progress(args)
    prefixes: Iterable[str] | None = None
    source_name: str | None = None
    if src.lower() not in ("none", "", "selfgen"):
        from ..calib.textsources import iter_texts

        prefixes = iter_texts(src)
        source_name = src
    if settings.protocol == "paper" and prefixes is None:
        raise ConfigError("The paper's protocol starts every sample with tokens of a real text: give "
                          "--prefix-source, or use --protocol windows for zero-data generation.")
    loaded = _load(args)
    what = (f"{settings.n} samples of {settings.seqlen} tokens" if settings.protocol == "windows" else
            f"samples (paper protocol) for {settings.n} windows of {settings.seqlen} tokens")
    progress.say(f"Generating {what} with {loaded.name} "
                 f"({'zero-data' if prefixes is None else 'prefixes from ' + src}, seed {settings.seed})")
    cs = run_to_completion(iter_generate(loaded.model, loaded.tokenizer, settings, prefixes, source_name=source_name),
                progress)
    path = cs.save(args.out)
    st = cs.stats()
    if cs.settings.get("protocol") == "paper":
        progress.say(
            f"{st['samples']} windows cut from {cs.settings['samples_used']} samples "
            f"({cs.settings['drop_count']} dropped for perplexity above {_fmt(cs.settings['perplexity_threshold'])}); "
            f"distinct 4-grams {_fmt(st['distinct_4'], 3)}"
        )
    else:
        progress.say(
            f"kept {st['samples']} samples, dropped {st['dropped']}; perplexity mean {_fmt(st['ppl_mean'])} "
            f"(std {_fmt(st['ppl_std'])}); distinct 4-grams {_fmt(st['distinct_4'], 3)}"
        )
    print(path)
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from ..calib.calibset import CalibrationSet
    from ..calib.similarity import score_calibration

    if not (0 < args.k <= 1):
        raise ConfigError(f"--k must be above 0 and at most 1 (got {args.k}).")
    progress = _progress(args)
    loaded = _load(args)
    if CalibrationSet.is_saved_set(args.source):
        cs = CalibrationSet.load(args.source, tokenizer=loaded.tokenizer)
    else:
        from ..calib.sampling import sample_calibration

        cs = sample_calibration(loaded.tokenizer, args.source, args.nsamples, args.seqlen, args.seed, mode="random")
    progress.say(f"Scoring {len(cs)} samples of {cs.seqlen} tokens with {loaded.name}")
    t0 = time.perf_counter()
    res = score_calibration(loaded.model, loaded.tokenizer, cs, k=args.k, batch_size=args.batch_size)
    progress.say(
        f"Min-K%++ ({args.k:g}) mean {_fmt(res['minkpp_mean'], 3)} (std {_fmt(res['minkpp_std'], 3)}); "
        f"perplexity mean {_fmt(res['ppl_mean'])} (std {_fmt(res['ppl_std'])}) "
        f"over {res['n']} samples in {time.perf_counter() - t0:.1f}s"
    )
    out = {"source": cs.source or args.source, "model": loaded.name, "seqlen": cs.seqlen, **res}
    print(json.dumps(out, indent=2))
    return 0
