"""``prunestudio`` command line: the same engine as the desktop app, headless.

    prunestudio fetch-model NAME | --list      (fetch-demo-model = fetch-model demo)
    prunestudio prune --model demo --method wanda --sparsity 0.5 --calibration selfgen --out DIR
    prunestudio eval --model DIR --ppl wiki.test.raw --seqlen 512
    prunestudio calib generate|score ...
    prunestudio doctor                         (can this machine run Prune Studio?)

Errors are one readable line on stderr and a non-zero exit status (``--verbose`` adds details
and the traceback): 1 for a bad input or setting, 2 for an unexpected failure (a bug), 130 when
cancelled.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from ..errors import PruneStudioError
from ..files import atomic_write_text
from ..config import SETTINGS_PRESETS
from ..prune.methods import registry
from .logs import quiet_libraries, setup_logging, teardown_logging

EXIT_ERROR = 1
EXIT_UNEXPECTED = 2
EXIT_CANCELLED = 130


def _add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, default=None if required else "demo",
                   help="demo or another catalogue model (fetch-model --list), a model folder, a .gguf file, "
                   "or a hub id (owner/name)")
    p.add_argument("--device", default=None, help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default=None, help="auto, fp32, bf16 or fp16")
    p.add_argument("--trust-remote-code", action="store_true", default=None,
                   help="run Python code shipped with the model (only for models you trust)")


def _method_help() -> tuple[str, str]:
    """``--method``'s help and which methods run in one pass by default, from the method registry."""
    from ..config import PruneConfig

    methods = registry.methods()
    text = " ".join(f"{m.name}: {m.description}" for m in methods) + f" Default: {PruneConfig.method}."
    once = [m.label for m in methods if m.one_pass]
    refining = [m.label for m in methods if m.one_pass is None]
    if not once:
        return text, "no method's default"
    default = "the default for " + " and ".join(once)
    if refining:
        default += f", and for {' and '.join(refining)} on {' or '.join(once)}'s mask"
    return text, default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunestudio", description="Post-training pruning of LLMs.")
    parser.add_argument("--verbose", "-v", action="store_true", help="show details of errors")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("fetch-demo-model", help="download and convert the embedded default model "
                   "(the same as fetch-model demo)")
    from ..model.catalog import catalog_names

    p = sub.add_parser("fetch-model", help="download and convert a model of the catalogue into the cache")
    p.add_argument("name", nargs="?", choices=catalog_names(), metavar="NAME",
                   help="one of: " + ", ".join(catalog_names()))
    p.add_argument("--list", action="store_true", help="list the catalogue and what is already fetched")
    p.add_argument("--force", action="store_true", help="fetch and convert again even when cached")

    p = sub.add_parser("prune", help="prune a model and export it")
    p.add_argument("--recipe", help="a recipe JSON file; other flags override its values")
    p.add_argument("--model", default=None,
                   help="demo or another catalogue model (fetch-model --list), a model folder, a .gguf file, "
                   "or a hub id")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--trust-remote-code", action="store_true", default=None)
    method_help, one_pass_default = _method_help()
    p.add_argument("--method", choices=registry.names(), default=None, help=method_help.replace("%", "%%"))
    p.add_argument("--sparsity", type=float, default=None)
    p.add_argument("--structure", default=None, help="unstructured, 2:4, 4:8 or any N:M")
    p.add_argument("--calibration", default=None,
                   help="selfgen, selfgen:SOURCE, a file, hf:NAME[:CONFIG[:SPLIT]], a preset, or a saved set")
    p.add_argument("--nsamples", type=int, default=None)
    p.add_argument("--seqlen", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--sampling", choices=["random", "document"], default=None,
                   help="token windows over the joined corpus (random) or inside single documents")
    p.add_argument("--selfgen-protocol", choices=["windows", "paper"], default=None,
                   help="self-generation: windows (default: every sample one window, zero-data with selfgen) or "
                        "paper (Ji et al.: 2-token prefixes from selfgen:SOURCE, samples that may end at "
                        "end-of-text, joined and cut into --nsamples windows)")
    p.add_argument("--preset", choices=sorted(SETTINGS_PRESETS), default=None,
                   help="sizes: cpu (the defaults: 64 x 512 calibration, 512-token evaluation windows) or paper "
                        "(128 x 2048 calibration from single documents, WikiText-2 perplexity on 2048-token "
                        "windows); applied on top of --recipe, other flags override it")
    p.add_argument("--batch-size", type=int, default=None, help="calibration samples per forward pass")
    order = p.add_mutually_exclusive_group()
    order.add_argument("--one-pass", dest="one_pass", action="store_true", default=None,
                       help="one forward pass per block, each module pruned before the next runs "
                            f"({one_pass_default})".replace("%", "%%"))
    order.add_argument("--two-pass", dest="one_pass", action="store_false",
                       help="the reference order: statistics of each dense block, then a second pass for "
                            "its outputs (the default for the other methods)")
    p.add_argument("--skip", action="append", default=None, help="leave modules whose name contains this dense")
    p.add_argument("--allow-partial", action="store_true", default=None,
                   help="prune what can be pruned when some block weights cannot be (expert tensors in a "
                        "layout this version does not know) and stay dense; without it such a run is refused")
    p.add_argument("--expert-min-tokens", type=int, default=None,
                   help="mixture-of-experts models: an expert routed fewer calibration tokens than this is "
                        "pruned with statistics from all tokens of its block (default 32; 0: only experts that "
                        "received none)")
    p.add_argument("--owl", action="store_true", default=None, help="OWL layer-wise sparsity allocation")
    p.add_argument("--owl-m", type=float, default=None)
    p.add_argument("--owl-lambda", type=float, default=None)
    p.add_argument("--dsnot-init", choices=registry.names(refining=False), default=None,
                   help="the method whose mask DSnoT refines (default wanda)")
    p.add_argument("--dsnot-max-cycles", type=int, default=None)
    p.add_argument("--dsnot-threshold", type=float, default=None)
    p.add_argument("--dsnot-skip", choices=["mlp", "attention", "none"], default=None,
                   help="modules DSnoT leaves with their initial mask (default mlp, as the reference)")
    p.add_argument("--dsnot-rule", choices=["reference", "decrease"], default=None,
                   help="DSnoT's swap rule: reference (default: swap while the error estimate exceeds the "
                        "threshold, as the reference) or decrease (only swaps that lower it)")
    p.add_argument("--sparsegpt-blocksize", type=int, default=None)
    p.add_argument("--sparsegpt-damp", type=float, default=None)
    p.add_argument("--offload", choices=["none", "cpu", "disk"], default=None,
                   help="where blocks wait while one is pruned: none (all on the compute device), "
                        "cpu (host memory, default) or disk (memory-mapped from the safetensors "
                        "files: models larger than RAM)")
    p.add_argument("--offload-dir", default=None, help="disk offload: folder for the pruned blocks")
    p.add_argument("--no-offload", action="store_true", default=None,
                   help="keep the whole model on the compute device (same as --offload none)")
    p.add_argument("--eval-ppl", default=None,
                   help="perplexity set: wikitext2 or c4 (the papers' suites), a file, or hf:NAME...")
    p.add_argument("--eval-seqlen", type=int, default=None)
    p.add_argument("--eval-max-windows", type=int, default=None,
                   help="evaluate on at most this many windows (default: the whole set)")
    p.add_argument("--out", help="export folder (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    p.add_argument("--ollama-modelfile", action="store_true",
                   help="also write a Modelfile for Ollama into the export folder and print the "
                        "`ollama create` command")
    p.add_argument("--card-samples", type=int, default=0, choices=range(0, 4), metavar="N",
                   help="continue N (0-3) fixed prompts greedily with the dense and the pruned model, "
                        "for the model card and the report (default 0)")
    p.add_argument("--report", help="also write the report JSON here")
    p.add_argument("--save-recipe", help="write the effective recipe JSON here")
    p.add_argument("--save-calibration", help="write the calibration set (.jsonl) here")
    p.add_argument("--include-paths", action="store_true", help="keep absolute paths in reports")

    e = sub.add_parser("eval", help="evaluate a model (perplexity, zero-shot tasks)")
    _add_model_args(e)
    e.add_argument("--ppl", action="append", default=[],
                   help="perplexity set (repeatable): wikitext2, c4 (the papers' suites), a file or hf:NAME")
    e.add_argument("--ppl-data", default=None,
                   help="folder with wikitext-2/wiki.test.raw and c4/*.jsonl.gz for the wikitext2 and c4 "
                        "suites (default: --task-data, then $PRUNESTUDIO_EVAL_DATA, then the hub)")
    e.add_argument("--seqlen", type=int, default=None, help="tokens per window (default 512; 2048 with --preset paper)")
    e.add_argument("--max-windows", type=int, default=None)
    e.add_argument("--preset", choices=sorted(SETTINGS_PRESETS), default=None,
                   help="paper: 2048-token windows, wikitext2 and c4 when no --ppl is given, and the whole task "
                        "sets for --tasks (HellaSwag's 10,042 questions, never the local 1,000-item subset); "
                        "cpu: the defaults (512-token windows)")
    e.add_argument("--tasks", default=None, help="comma-separated zero-shot tasks, or all")
    e.add_argument("--task-data", default=None, help="folder with local task files")
    e.add_argument("--limit", type=int, default=None, help="items per task")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--report", help="write the report JSON here")

    # the other subcommands live in their own modules; a broken one is an error, never a silently
    # missing command
    from .calib import register as register_calib
    from .doctor import register as register_doctor
    from .experiment import register as register_experiment

    register_calib(sub)
    register_experiment(sub)
    register_doctor(sub)
    _add_threads(parser, sub)
    return parser


_THREADS_HELP = ("torch threads for CPU work: auto (default: the CPUs available to this process less "
                 "those other processes keep busy, never more than torch's default) or a number")


def _add_threads(parser: argparse.ArgumentParser, sub: Any) -> None:
    """``--threads`` before the command (``prunestudio --threads 1 prune ...``) or after it, on
    every command that computes (prune, eval, calib generate / score, experiment)."""
    parser.add_argument("--threads", default=None, help=_THREADS_HELP)
    todo = [sub.choices[n] for n in ("prune", "eval", "experiment")]
    calib_sub = next(a for a in sub.choices["calib"]._actions if isinstance(a, argparse._SubParsersAction))
    todo += list(calib_sub.choices.values())
    for p in todo:
        p.add_argument("--threads", default=argparse.SUPPRESS, help=_THREADS_HELP)


def _apply_threads(args: argparse.Namespace) -> None:
    """The process's thread request from ``--threads`` (a bad value is a one-line error)."""
    from ..model import threads

    threads.set_requested(threads.parse_threads(getattr(args, "threads", None)))


def _recipe_from_args(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from ..config import CalibConfig, PruneConfig, Recipe

    recipe = Recipe.load(args.recipe) if args.recipe else Recipe(
        prune=PruneConfig(), calibration=CalibConfig())
    if args.preset:
        from ..config import settings_preset

        recipe = settings_preset(args.preset).apply(recipe)
    prune_kw = {k: v for k, v in {
        "method": args.method, "sparsity": args.sparsity, "structure": args.structure,
        "owl": args.owl, "owl_m": args.owl_m, "owl_lambda": args.owl_lambda,
        "dsnot_init": args.dsnot_init, "dsnot_max_cycles": args.dsnot_max_cycles,
        "dsnot_threshold": args.dsnot_threshold,
        "dsnot_skip": args.dsnot_skip, "dsnot_rule": args.dsnot_rule,
        "sparsegpt_blocksize": args.sparsegpt_blocksize,
        "sparsegpt_damp": args.sparsegpt_damp, "batch_size": args.batch_size,
        "skip_modules": tuple(args.skip) if args.skip else None,
        "offload": (False if args.no_offload else None),
        "offload_dir": args.offload_dir,
        "one_pass": args.one_pass,
        "allow_partial": args.allow_partial,
        "expert_min_tokens": args.expert_min_tokens,
    }.items() if v is not None}
    if args.offload is not None:
        off_kw = {"none": {"offload": False}, "cpu": {"offload": True, "offload_to": "cpu"},
                  "disk": {"offload": True, "offload_to": "disk"}}[args.offload]
        prune_kw.update(off_kw)
    cal_kw = {k: v for k, v in {
        "source": args.calibration, "nsamples": args.nsamples, "seqlen": args.seqlen,
        "seed": args.seed, "mode": args.sampling, "protocol": args.selfgen_protocol}.items() if v is not None}
    top_kw = {k: v for k, v in {
        "model": args.model, "device": args.device, "dtype": args.dtype,
        "trust_remote_code": args.trust_remote_code,
        "eval_ppl": (args.eval_ppl,) if args.eval_ppl else None,
        "eval_seqlen": args.eval_seqlen, "eval_max_windows": args.eval_max_windows}.items() if v is not None}
    return replace(recipe, prune=replace(recipe.prune, **prune_kw),
                   calibration=replace(recipe.calibration, **cal_kw), **top_kw)


def _write_json(path: str, data: dict[str, Any]) -> None:
    from ..run.export import _json_default

    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def cmd_fetch(args: argparse.Namespace, progress: Any) -> int:
    """``fetch-model NAME`` (``fetch-demo-model`` is ``fetch-model demo``) and ``fetch-model --list``:
    prints the model's folder, or the catalogue."""
    from ..events import run_to_completion
    from ..model import catalog

    name, force = "demo", False
    if args.command == "fetch-model":
        if args.list:
            for entry in catalog.CATALOG.values():
                where = str(catalog.model_dir(entry.name)) if catalog.is_ready(entry.name) else "not fetched"
                print(f"{entry.summary()}; {where}")
            return 0
        if args.name is None:
            from ..errors import ConfigError

            raise ConfigError("Name a model to fetch (" + ", ".join(catalog.catalog_names())
                              + "), or list them with --list.")
        name, force = args.name, args.force
    path = run_to_completion(catalog.iter_fetch_model(name, force=force), progress)
    print(path or catalog.model_dir(name))
    return 0


def cmd_prune(args: argparse.Namespace, progress: Any) -> int:
    from ..events import run_to_completion
    from ..run.job import iter_job

    recipe = _recipe_from_args(args)
    if args.save_recipe:
        recipe.save(args.save_recipe)
    if args.ollama_modelfile and not args.out:
        from ..errors import ConfigError

        raise ConfigError("--ollama-modelfile writes into the export folder: give one with --out.")
    res = run_to_completion(iter_job(recipe, args.out, overwrite=args.overwrite,
                                     include_paths=args.include_paths, samples=args.card_samples), progress)
    if args.report:
        _write_json(args.report, res.report)
    if args.save_calibration and res.calibration is not None:
        res.calibration.save(args.save_calibration)
    r = res.report
    summary = f"global sparsity {r['global_sparsity']:.4f}"
    cov = r.get("coverage") or {}
    if cov.get("partial"):
        summary += (f" of the pruned modules (PARTIAL: only {cov['pruned_share']:.1%} of the block weights "
                    f"were pruned; {cov['dense_share']:.1%} of the block parameters stayed dense)")
    if r.get("eval"):  # what the numbers were measured on, with them
        from ..run.export import measured_on

        d, p = r.get("ppl_dense"), r.get("ppl_pruned")
        summary += (f", perplexity {'–' if d is None else f'{d:.3f}'} -> {'–' if p is None else f'{p:.3f}'} "
                    f"({measured_on(r['eval'])})")
    progress.say(summary)
    if cov.get("partial"):  # shown even with --quiet
        logging.getLogger("prunestudio").warning(r["notes"][0])
    if res.export_dir is not None:
        progress.say(f"Pruned model written to {res.export_dir}")
        print(res.export_dir)
        if args.ollama_modelfile:
            from ..run.ollama import create_command, write_modelfile

            path, mf = write_modelfile(res.export_dir, res.report)
            if mf.warning():
                logging.getLogger("prunestudio").warning(mf.warning())
            progress.say(f"Ollama Modelfile written to {path}; import the model with:")
            print(create_command(path))
    return 0


def _suite_dir(task_data: str | None) -> str | None:
    """The --task-data folder doubles as the perplexity data folder when it holds suite files."""
    if not task_data:
        return None
    base = Path(task_data)
    return task_data if (base / "wikitext-2").is_dir() or (base / "c4").is_dir() else None


def cmd_eval(args: argparse.Namespace, progress: Any) -> int:
    from ..events import run_to_completion
    from ..run.evaluation import iter_ppl_measured
    from ..run.load import LoadArgs, iter_load, place_model
    from ..run.report import add_perplexities, add_zeroshot, eval_report, public_source

    full = False
    if args.preset:
        from ..config import settings_preset

        preset = settings_preset(args.preset)
        if args.seqlen is None:
            args.seqlen = preset.eval_seqlen
        if not args.ppl and preset.name == "paper":
            args.ppl = ["wikitext2", "c4"]
        full = preset.zeroshot_full
    if args.seqlen is None:
        args.seqlen = 512
    load = LoadArgs(args.model, args.device or "auto", args.dtype or "auto", bool(args.trust_remote_code))
    loaded = run_to_completion(iter_load(load), progress)
    report = eval_report(args.model, args.seqlen)
    ppl_data = args.ppl_data or _suite_dir(args.task_data)
    ppl: dict[str, float] = {}
    windows: dict[str, int] = {}
    for src in args.ppl:
        m = run_to_completion(
            iter_ppl_measured(loaded, src, args.seqlen, max_windows=args.max_windows, data_dir=ppl_data), progress)
        name = public_source(src)
        ppl[name], windows[name] = m.ppl, m.windows
        progress.say(f"perplexity {name}: {m.ppl:.3f} ({m.windows} windows of {args.seqlen} tokens)")
    add_perplexities(report, ppl, windows)
    if args.tasks:
        from ..evaluate.task_data import TASKS
        from ..evaluate.zeroshot import iter_zeroshot

        place_model(loaded)
        tasks = list(TASKS) if args.tasks.strip() == "all" else [t.strip() for t in args.tasks.split(",") if t.strip()]
        res = run_to_completion(iter_zeroshot(loaded.model, loaded.tokenizer, tasks, args.task_data,
                                              args.limit, args.batch_size, full=full), progress)
        for k, v in res.items():
            progress.say(f"{k}: acc {v.acc:.4f}  acc_norm {v.acc_norm:.4f}  (n={v.n})")
        add_zeroshot(report, res)
    if args.report:
        _write_json(args.report, report)
    print(json.dumps({k: v for k, v in report.items() if k in ("ppl", "windows", "tasks")}, indent=2))
    return 0


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 1 an error the user can fix (one line on stderr),
    2 an unexpected failure (a bug: one line, the traceback with ``-v``), 130 cancelled."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_libraries()
    setup_logging(args.verbose)
    try:
        return _run(args)
    finally:
        teardown_logging()


def _run(args: argparse.Namespace) -> int:
    log = logging.getLogger("prunestudio")
    from .progress import ProgressPrinter

    def err(text: str) -> None:  # errors are shown even with --quiet
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    progress = ProgressPrinter(quiet=args.quiet)
    handlers = {"fetch-demo-model": cmd_fetch, "fetch-model": cmd_fetch, "prune": cmd_prune, "eval": cmd_eval}
    handler = handlers.get(args.command) or getattr(args, "handler", None)
    try:
        _apply_threads(args)
        from contextlib import nullcontext

        from ..model.threads import job_threads

        # one choice for a whole evaluation or grid (comparable timings); prune and calib generate
        # choose theirs when their run or generation starts
        with job_threads() if args.command in ("eval", "experiment") else nullcontext():
            if handler in handlers.values():
                return handler(args, progress)
            return int(handler(args) or 0)
    except KeyboardInterrupt:
        err("Cancelled.")
        return EXIT_CANCELLED
    except PruneStudioError as e:
        from ..errors import Cancelled

        log.debug("%s failed", args.command, exc_info=True)
        more = bool(e.details or e.__cause__) and not isinstance(e, Cancelled)
        err(f"error: {' '.join(str(e).splitlines())}"
            + (" (rerun with -v for details)" if more and not args.verbose else ""))
        if args.verbose and e.details and "Traceback (most recent call last)" not in e.details:
            err(e.details)
        return EXIT_CANCELLED if isinstance(e, Cancelled) else EXIT_ERROR
    except MemoryError:
        log.debug("%s ran out of memory", args.command, exc_info=True)
        err("error: the machine ran out of memory. Use fewer samples or a shorter sequence length.")
        return EXIT_ERROR
    except Exception as e:  # a bug: one line, the traceback only on request
        log.debug("%s failed unexpectedly", args.command, exc_info=True)
        msg = _first_line(str(e))
        err(f"error: unexpected failure ({type(e).__name__}{': ' + msg if msg else ''}); "
            "rerun with -v for the traceback")
        return EXIT_UNEXPECTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
