"""Experiment grids: many runs (sources x methods x sparsities x structures x seeds), resumable."""

from .grid import *  # noqa: F401,F403
from .grid import __all__  # noqa: F401
