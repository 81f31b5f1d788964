"""A terminal progress renderer for engine events (the CLI's view; the GUI has its own)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ..events import (
    AllocationComputed,
    BlockDone,
    BlockStarted,
    Event,
    Message,
    ModulePruned,
    PhaseDone,
    PhaseProgress,
    PhaseStarted,
    RunFinished,
    RunStarted,
)


def _bar(frac: float, width: int = 24) -> str:
    full = int(round(max(0.0, min(1.0, frac)) * width))
    return "#" * full + "-" * (width - full)


def _dur(s: float) -> str:
    s = int(s)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class ProgressPrinter:
    """Turns events into one updating line on a TTY, or plain lines in a log file."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._blocks = 0
        self._modules = 1
        self._done_modules = 0
        self._t_run = 0.0
        self._phase_t: dict[str, float] = {}
        self._last_line = ""
        self._block = -1
        self._grid_counts: tuple[int, int, int, int] | None = None

    def _line(self, text: str, final: bool = False) -> None:
        if self.quiet or self.stream is None:
            return
        if self.tty:
            pad = max(0, len(self._last_line) - len(text))
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
            self._last_line = "" if final else text
        elif final:
            self.stream.write(text + "\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        if self.quiet or self.stream is None:
            return
        if self.tty and self._last_line:
            self.stream.write("\n")
            self._last_line = ""
        self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, ev: Event) -> None:  # noqa: C901 - a flat dispatch reads best
        if isinstance(ev, RunStarted):
            per_block = ev.block_module_names or (ev.module_names,) * ev.num_blocks  # hybrid blocks differ
            self._blocks, self._modules = ev.num_blocks, max(1, sum(len(n) for n in per_block))
            self._t_run = time.perf_counter()
            shape = (f"{ev.num_blocks} blocks x {len(ev.module_names)} modules"
                     if len(set(per_block)) <= 1 else f"{ev.num_blocks} blocks ({self._modules} modules in all)")
            self.say(f"Pruning {shape} with {ev.method} "
                     f"on {ev.device} ({ev.nsamples} x {ev.seqlen} calibration tokens)")
        elif isinstance(ev, BlockStarted):
            self._block = ev.index
        elif isinstance(ev, ModulePruned):
            self._done_modules += 1
            total = self._modules  # modules of all blocks
            frac = self._done_modules / max(total, 1)
            el = time.perf_counter() - self._t_run
            eta = el / frac * (1 - frac) if frac > 0 else 0
            self._line(f"prune [{_bar(frac)}] block {ev.block + 1}/{self._blocks} {ev.name:<22} "
                       f"{ev.sparsity:.3f} | {_dur(el)} elapsed, ~{_dur(eta)} left")
        elif isinstance(ev, BlockDone):
            if not self.tty:
                self._line(f"block {ev.index + 1}/{self._blocks}: sparsity {ev.sparsity:.4f} "
                           f"in {ev.seconds:.1f}s", final=True)
        elif isinstance(ev, RunFinished):
            self._line(f"prune [{_bar(1)}] done: global sparsity {ev.global_sparsity:.4f} "
                       f"in {_dur(ev.seconds)}", final=True)
        elif isinstance(ev, AllocationComputed):
            lo, hi = min(ev.block_sparsity), max(ev.block_sparsity)
            self.say(f"OWL allocation: block sparsity from {lo:.3f} to {hi:.3f}")
        elif isinstance(ev, PhaseStarted):
            self._phase_t[ev.phase] = time.perf_counter()
        elif isinstance(ev, PhaseProgress):
            frac = ev.share
            now = time.perf_counter()
            el = now - self._phase_t.setdefault(ev.phase, now)
            eta = f", ~{_dur(el / frac * (1 - frac))} left" if 0 < frac < 1 else ""
            self._line(f"{ev.phase} [{_bar(frac)}] {ev.done}/{ev.total} {ev.detail}".rstrip()
                       + f" | {_dur(el)} elapsed{eta}")
        elif isinstance(ev, PhaseDone):
            if ev.phase not in ("capture",):
                self._line(f"{ev.phase}: done in {_dur(ev.seconds)}", final=True)
        elif isinstance(ev, Message):
            self.say(("warning: " if ev.level == "warning" else "") + ev.text)
        else:
            self._other(ev)

    def _grid(self, ev: Any) -> None:
        """Cells done / running / queued / failed with a bar, and what each running cell does: one
        updating line on a TTY; in a log, a line each time a count changes."""
        counts = (f"cells [{_bar((ev.done + ev.failed) / max(ev.total, 1))}] {ev.done}/{ev.total} done, "
                  f"{ev.running} running, {ev.queued} queued, {ev.failed} failed")
        if self.tty:
            doing = "; ".join(f"#{c.index + 1} {c.doing}" if c.index >= 0 else f"{c.description} {c.doing}"
                              for c in ev.cells)
            self._line(counts + (f" | {doing}" if doing else ""))
        elif (ev.done, ev.running, ev.queued, ev.failed) != self._grid_counts:
            self._grid_counts = (ev.done, ev.running, ev.queued, ev.failed)
            self.say(counts + "".join(f"\n  running #{c.index + 1} {c.description}: {c.doing}"
                                      for c in ev.cells if c.index >= 0))

    def _other(self, ev: Any) -> None:
        # events of optional modules (self-generation) are described by their own fields
        name = type(ev).__name__
        if name == "GridProgress":  # an experiment grid's counts (core/experiment/events.py)
            self._grid(ev)
        elif name == "SampleGenerated":
            self._line(f"generate: sample {ev.index + 1} ({ev.num_tokens} tokens, ppl {ev.perplexity:.1f})")
        elif name == "FilteringDone":
            self.say(f"filter: dropped {len(ev.dropped)} samples with perplexity above {ev.threshold:.2f}")
