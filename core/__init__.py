"""Prune Studio's engine: loading, calibration, layer-wise pruning, evaluation, export.

Nothing in this package imports Qt; the GUI in ``prunestudio.gui`` only drives it.
"""

__version__ = "0.1.0"
