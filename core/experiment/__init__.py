"""Experiment grids: many runs (sources x methods x sparsities x structures x seeds), resumable.

``grid`` reads the grid file into cells and their keys, ``runner`` runs the pending cells through
the one run path (:mod:`prunestudio.core.run`), ``summary`` writes the tables of the finished ones.
"""

from .grid import DENSE, Cell, EvalSpec, GridSpec, SourceSpec
from .runner import (
    CellFinished,
    CellSkipped,
    CellStarted,
    ExperimentResult,
    default_db,
    iter_experiment,
    run_experiment,
)
from .summary import cell_metrics, collect, mean_std, summarize, summary_csv, summary_markdown, write_summary

__all__ = ["GridSpec", "EvalSpec", "SourceSpec", "Cell", "iter_experiment", "run_experiment", "summarize",
           "summary_markdown", "summary_csv", "write_summary", "collect", "mean_std", "cell_metrics",
           "CellStarted", "CellSkipped", "CellFinished", "ExperimentResult", "DENSE", "default_db"]
