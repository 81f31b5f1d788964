"""Experiment grids: many runs (sources x methods x sparsities x structures x seeds), resumable.

``grid`` reads the grid file into cells and their keys, ``runner`` runs the pending cells through
the one run path (:mod:`prunestudio.core.run`) with an executor (``executors``: this process, or a
Ray cluster with ``ray_executor`` and ``ray_tasks``), ``session`` is one loaded model that cells
run on, ``events`` what a grid reports, ``summary`` writes the tables of the finished ones.
"""

from .grid import DENSE, Cell, EvalSpec, GridSpec, SourceSpec
from .events import CellFailed, CellFinished, CellSkipped, CellStarted, GridProgress, RunningCell
from .executors import EXECUTORS, LocalExecutor, make_executor
from .runner import ExperimentResult, default_db, iter_experiment, run_experiment
from .summary import cell_metrics, collect, mean_std, summarize, summary_csv, summary_markdown, write_summary

__all__ = ["GridSpec", "EvalSpec", "SourceSpec", "Cell", "iter_experiment", "run_experiment", "summarize",
           "summary_markdown", "summary_csv", "write_summary", "collect", "mean_std", "cell_metrics",
           "CellStarted", "CellSkipped", "CellFinished", "CellFailed", "GridProgress", "RunningCell",
           "ExperimentResult", "DENSE", "default_db", "EXECUTORS", "LocalExecutor", "make_executor"]
