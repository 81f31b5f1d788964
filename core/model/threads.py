"""How many torch threads a CPU job uses: the CPUs this process may run on, less those other
processes keep busy.

Threads that wait on busy cores make CPU work many times slower (on a busy 2-core machine the
self-generation benchmark ran 8x slower with 2 threads than with 1), so a job measures the machine
when it starts and takes what is free. The one policy is :func:`choose_threads`; a job applies it
with :func:`job_threads`, which restores the previous count when the job ends.

The number is asked for process-wide (:func:`set_requested`: the CLI's ``--threads``, the app's
setting; ``PRUNESTUDIO_THREADS`` in the environment) or left to ``auto``. ``auto`` never takes more
threads than torch has when the job starts (its default, or ``OMP_NUM_THREADS``), so it only ever
lowers the count, and on an idle machine it keeps torch's own choice. The thread count does not
change what is computed, only how fast; float reductions split differently across threads may
differ in the last bits, as they do between machines.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch

from ..errors import ConfigError

ENV = "PRUNESTUDIO_THREADS"
_lock = threading.Lock()
_requested: int | None = None  # None: auto (or the environment)
_active: "ThreadChoice | None" = None  # the choice of the job running now (nested jobs reuse it)


@dataclass(frozen=True)
class ThreadChoice:
    """The threads a job uses and why: ``requested`` (None: auto), the CPUs available to the process,
    how many of them other processes kept busy (None: not measured), and a sentence."""

    threads: int
    requested: int | None
    cpus: int
    busy: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["requested"] = "auto" if self.requested is None else self.requested
        if self.busy is None:
            del d["busy"]
        else:
            d["busy"] = round(self.busy, 2)
        return d


def parse_threads(value: Any) -> int | None:
    """``auto`` / ``0`` / None -> None; a whole number of at least 1 -> itself; anything else refused."""
    if value is None:
        return None
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("", "auto", "0"):
            return None
        if not v.isdecimal():
            raise ConfigError(f"Threads must be 'auto' or a whole number of at least 1, got {value!r}.")
        value = int(v)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"Threads must be 'auto' or a whole number of at least 1, got {value!r}.")
    return value or None


def set_requested(n: int | None) -> None:
    """Ask every later job for ``n`` threads (None: auto)."""
    global _requested
    n = parse_threads(n)
    with _lock:
        _requested = n


def requested() -> int | None:
    """The threads asked for: :func:`set_requested`, else ``PRUNESTUDIO_THREADS``, else None (auto).
    A malformed environment value counts as auto."""
    with _lock:
        if _requested is not None:
            return _requested
    try:
        return parse_threads(os.environ.get(ENV))
    except ConfigError:
        return None


def cpus_available() -> int:
    """The CPUs this process may run on (its affinity mask; all CPUs where there is none)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_cpus(interval: float = 0.1) -> float | None:
    """How many of this process's CPUs other processes keep busy now: their use over ``interval``
    seconds less this process's own (psutil), or the 1-minute load average where psutil is missing
    (it counts this process too). None when neither can be read."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            try:
                mine = sorted(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                mine = None
            proc = psutil.Process()
            proc.cpu_percent(None)
            psutil.cpu_percent(None, percpu=True)
            time.sleep(interval)
            per_cpu = psutil.cpu_percent(None, percpu=True)
            own = proc.cpu_percent(None) / 100.0
            used = sum(p for i, p in enumerate(per_cpu) if mine is None or i in mine) / 100.0
            return max(0.0, used - own)
        except Exception:  # noqa: BLE001 - an unsupported platform: fall back to the load average
            pass
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def choose_threads(requested_n: int | None = None, cpus: int | None = None, busy: float | None = None,
                   current: int | None = None, measure: bool = True) -> ThreadChoice:
    """The threads for a job. ``requested_n``: a number asked for (taken as it is); None: auto, which
    takes the CPUs available (``cpus``) less those other processes keep busy (``busy``, rounded to
    the nearest whole CPU), at least 1 and at most ``current`` (torch's count when the job starts).
    ``cpus``/``busy``/``current`` are measured when not given (``measure=False``: ``busy`` unknown)."""
    cur = current if current is not None else torch.get_num_threads()
    n_cpus = cpus if cpus is not None else cpus_available()
    if requested_n is not None:
        note = f"{requested_n} thread(s) as asked"
        if requested_n > n_cpus:
            note += f"; more than the {n_cpus} CPU(s) available, which slows CPU work"
        return ThreadChoice(requested_n, requested_n, n_cpus, busy, note + ".")
    cap = max(1, min(cur, n_cpus))
    if cap == 1:
        return ThreadChoice(1, None, n_cpus, busy, "1 thread: "
                            + ("torch is set to one thread." if cur <= 1 else "one CPU is available."))
    if busy is None and measure:
        busy = busy_cpus()
    if busy is None:
        return ThreadChoice(cap, None, n_cpus, None, f"{cap} threads: the load of the CPUs could not be read.")
    free = int(n_cpus - busy + 0.5)
    n = max(1, min(cap, free))
    why = f"{n} thread(s): {n_cpus} CPU(s) available, about {busy:.1f} kept busy by other processes"
    if n < cap:
        why += f" (torch would use {cur})"
    return ThreadChoice(n, None, n_cpus, busy, why + ".")


def active() -> ThreadChoice | None:
    """The choice of the job running now, if any."""
    return _active


@contextmanager
def job_threads(requested_n: int | None = None) -> Iterator[ThreadChoice]:
    """Use the chosen threads for the enclosed job, then restore the count it had.

    ``requested_n`` None: :func:`requested`. A job inside another (the calibration a run builds)
    keeps the outer job's choice. Applied whatever the device: work on a GPU still uses the CPU
    for tokenizing, sampling and host copies.
    """
    global _active
    if _active is not None:
        yield _active
        return
    before = torch.get_num_threads()
    want = requested_n if requested_n is not None else requested()
    choice = choose_threads(want, current=before)
    _active = choice
    try:
        if choice.threads != before:
            torch.set_num_threads(choice.threads)
        yield choice
    finally:
        _active = None
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
