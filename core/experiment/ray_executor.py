"""The Ray executor: every pending cell a Ray task, as many at once as the cluster has room for.

Why tasks and not Ray Tune: a cell is a fixed job whose key, resume and storage are Prune Studio's
(the run history), with no search, early stopping or trial checkpoints, which is what Tune adds.
Tune would also write its own results folder per trial and report through its own loop; tasks keep
one writer (the driver) and one history, and need only ``ray`` itself.

- **Placement.** Each cell asks for ``gpus_per_cell`` GPUs (default 1 where the cluster has GPUs)
  and ``cpus_per_cell`` CPUs (default 1 with a GPU, else the CPUs of the largest node: one cell per
  node), and uses that many torch threads. Without an address a local Ray starts with this
  machine's CPUs (and GPUs); with one, the driver joins that cluster (``ray start --head``).
- **Calibration sets.** One task per distinct calibration setting builds the set; Ray keeps it in
  its object store and hands it to every cell that prunes with it (the cells wait for it). A
  multi-node cluster moves it between nodes itself; each node needs the model, the data files and
  the cache at the same paths as the driver (or a shared folder): the tasks read them.
- **Faults.** Ray runs again a task whose worker died, at most ``max_retries`` times; its result is
  written once, when it arrives. A bad input comes back as the cell's failure (its sentence), an
  unexpected error as its type and message; the other cells go on. ``should_stop`` (the GUI) or
  Ctrl-C (the CLI) cancels the queued and running tasks (``ray.cancel``, force: the workers of
  running cells are ended); the history stays as it was after the last result written.
- **Progress.** The tasks tell a small actor (:class:`~.ray_tasks.ProgressBoard`) what they are
  doing; the driver reads it every ``poll_s`` seconds and yields :class:`~.events.GridProgress`.
"""

from __future__ import annotations

from typing import Any, Callable, Generator

from ..errors import Cancelled, ConfigError
from ..events import Event, Message
from ..model.threads import cpus_available
from .ray_tasks import ProgressBoard, build_calibration, run_cell
from .events import CellOutcome, CellStarted, GridProgress, RunningCell
from .grid import DENSE, Cell, GridSpec
from .session import calibration_key

StopFn = Callable[[], bool]

INSTALL = "pip install 'prunestudio[cluster]'"


def require_ray() -> Any:
    """The ``ray`` module, or one sentence that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, which is not installed; install it with {INSTALL}.") from None
    return ray


class RayExecutor:
    """Cells as Ray tasks (see the module's text). ``address``: a running cluster (``auto``, or
    ``HOST:PORT``); None: start a local Ray for the grid and stop it after (a Ray already started in
    this process, by a test or a script, is used as it is and left running)."""

    name = "ray"

    def __init__(self, address: str | None = None, gpus_per_cell: float | None = None,
                 cpus_per_cell: float | None = None, max_retries: int = 2, poll_s: float = 0.5,
                 crash_marker: str | None = None) -> None:
        for what, v in (("--gpus-per-cell", gpus_per_cell), ("--cpus-per-cell", cpus_per_cell)):
            if v is not None and not v > 0:
                raise ConfigError(f"{what} must be more than 0, got {v:g}.")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be 0 or more, got {max_retries}.")
        require_ray()
        self.address = address
        self.gpus_per_cell = gpus_per_cell
        self.cpus_per_cell = cpus_per_cell
        self.max_retries = max_retries
        self.poll_s = poll_s
        self.crash_marker = crash_marker  # a test hook: see ray_tasks._crash_once

    def shape(self, nodes: list[dict[str, float]]) -> tuple[float, float]:
        """(GPUs, CPUs) each cell asks for on a cluster of ``nodes`` (each node's resources);
        refused in one sentence when no node could ever run a cell."""
        gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
        cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
        g = self.gpus_per_cell if self.gpus_per_cell is not None else (1.0 if gpus > 0 else 0.0)
        c = self.cpus_per_cell if self.cpus_per_cell is not None else (1.0 if g > 0 else cpus)
        if g > gpus:
            raise ConfigError(f"each cell asks for {g:g} GPU(s), but no node of the Ray cluster has that many "
                              f"(the largest has {gpus:g}); lower --gpus-per-cell.")
        if c > cpus or c <= 0:
            raise ConfigError(f"each cell asks for {c:g} CPU(s), but no node of the Ray cluster has that many "
                              f"(the largest has {cpus:g}); lower --cpus-per-cell.")
        return g, c

    def iter_cells(self, spec: GridSpec, pending: Any, total: int, should_stop: StopFn,
                   calib_dir: Any = None) -> Generator[Event | CellOutcome, None, None]:
        # calib_dir is not used: the sets are built on the workers, which may be other machines
        # without the results folder; each run of the grid builds them again.
        ray = require_ray()
        started_here = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            yield Message(f"Starting Ray ({'cluster ' + self.address if self.address else 'on this machine'})...")
            try:
                if self.address:
                    ray.init(address=self.address, **kw)
                else:
                    ray.init(num_cpus=cpus_available(), **kw)
            except Exception as e:  # noqa: BLE001 - Ray's own errors vary: one sentence for all
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                where = f"join the Ray cluster at {self.address}" if self.address else "start Ray on this machine"
                raise ConfigError(f"Could not {where} ({first})"
                                  + ("; start it with `ray start --head`, or leave --address out for a local Ray."
                                     if self.address else ".")) from e
            started_here = True
        board = None
        left: dict[Any, tuple[int, Cell]] = {}
        builds: dict[str, Any] = {}
        try:
            nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
            gpus, cpus = self.shape(nodes)
            res = ray.cluster_resources()
            at_once = int(min(res.get("CPU", 0) // cpus, res.get("GPU", 0) // gpus if gpus else 1 << 30))
            yield Message(f"Ray: {len(nodes)} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs; "
                          f"each cell takes {gpus:g} GPU(s) and {cpus:g} CPU(s): up to {at_once} at once.")
            threads = max(1, int(cpus))
            board = ray.remote(num_cpus=0)(ProgressBoard).remote()
            opts: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": self.max_retries,
                                    "retry_exceptions": False}
            cell_task = ray.remote(**opts)(run_cell)
            build_task = ray.remote(**opts)(build_calibration)
            spec_ref = ray.put(spec)
            for i, cell in pending:
                calib = None
                if cell.kind != DENSE and cell.recipe.prune.needs_calibration:
                    ck = calibration_key(cell)
                    if ck not in builds:
                        builds[ck] = build_task.remote(spec_ref, cell, board, threads)
                    calib = builds[ck]
                left[cell_task.remote(spec_ref, cell, calib, board, threads, self.crash_marker)] = (i, cell)
            yield from self._collect(ray, board, left, total, should_stop)
        finally:
            _release(ray, list(left) + list(builds.values()), board, started_here)

    def _collect(self, ray: Any, board: Any, left: dict[Any, tuple[int, Cell]],
                 total: int, should_stop: StopFn) -> Generator[Event | CellOutcome, None, None]:
        """Yield each cell's outcome as it arrives and the grid's counts when they change."""
        by_key = {cell.key: (i, cell) for i, cell in left.values()}
        n, done, failed = len(left), 0, 0
        seen: dict[str, int] = {}
        last: GridProgress | None = None
        while left:
            if should_stop():
                raise Cancelled()
            ready, _ = ray.wait(list(left), num_returns=1, timeout=self.poll_s)
            for ref in ready:
                i, cell = left.pop(ref)
                report, seconds, error = self._result(ray, ref)
                done += error is None
                failed += error is not None
                yield CellOutcome(i, report, seconds, error)
            doing, starts = self._board(ray, board)
            for key, count in sorted(starts.items()):
                if key not in by_key or seen.get(key, 0) >= count:
                    continue
                i, cell = by_key[key]
                if key not in seen:
                    yield CellStarted(i, total, cell.describe(), key)
                if count > 1:
                    yield Message(f"cell {i + 1}/{total} ({cell.describe()}): its worker died; "
                                  f"Ray runs it again (attempt {count} of {self.max_retries + 1}).", "warning")
                seen[key] = count
            open_keys = {c.key for _, c in left.values()}
            running = tuple(RunningCell(by_key[k][0], by_key[k][1].describe(), d)
                            for k, d in sorted(doing.items(), key=lambda kv: by_key.get(kv[0], (-1,))[0])
                            if k in open_keys)
            building = sum(1 for k in doing if k.startswith("calibration:"))
            extra = (RunningCell(-1, f"{building} calibration set(s)", "building"),) if building else ()
            prog = GridProgress(n, done, len(running), len(left) - len(running), failed, running + extra)
            if prog != last:
                last = prog
                yield prog

    def _result(self, ray: Any, ref: Any) -> tuple[dict[str, Any] | None, float, str | None]:
        """A finished task's (report, seconds, error); a task that raised becomes an error sentence."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # an unexpected error in the cell (a bug, not retried)
            cause = e.cause if getattr(e, "cause", None) is not None else e
            msg = " ".join(str(cause).split("\n")[:1]).strip()
            return None, 0.0, f"unexpected failure ({type(cause).__name__}{': ' + msg if msg else ''})."
        except ray.exceptions.RayError as e:  # the worker or its node died as often as it may
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return None, 0.0, (f"its worker died {self.max_retries + 1} time(s) ({type(e).__name__}: "
                               f"{first[:200]}).")

    def _board(self, ray: Any, board: Any) -> tuple[dict[str, str], dict[str, int]]:
        try:
            return ray.get(board.snapshot.remote(), timeout=10)
        except ray.exceptions.RayError:  # the board is late: no counts this time
            return {}, {}


_CANCEL_WAIT_S = 20.0


def _release(ray: Any, refs: list[Any], board: Any, shutdown: bool) -> None:
    """Cancel ``refs`` (force: the workers of running ones end), end the board, and stop Ray when
    this grid started it; every step is tried even when a second Ctrl-C comes meanwhile (it is
    raised after them), so no Ray process of ours is left behind."""
    # the last submitted first: a queued task must not start on the CPU a cancelled one frees
    steps = [lambda r=r: ray.cancel(r, force=True) for r in reversed(refs)]
    if refs:  # then wait (bounded) until they have ended, so that none finds the board gone
        steps.append(lambda: ray.wait(refs, num_returns=len(refs), timeout=_CANCEL_WAIT_S))
    if board is not None:
        steps.append(lambda: ray.kill(board))
    if shutdown:
        steps.append(ray.shutdown)
    interrupted = False
    for step in steps:
        for _ in range(2):  # a step a Ctrl-C interrupted is tried once more
            try:
                step()
                break
            except KeyboardInterrupt:
                interrupted = True
            except Exception:  # noqa: BLE001 - a task that ended meanwhile, an actor already gone
                break
    if interrupted:
        raise KeyboardInterrupt


__all__ = ["RayExecutor", "require_ray", "INSTALL"]
