"""One run path, shared by the command line, the desktop app and experiment grids.

``load`` (:func:`~.load.iter_load`: a model, announced) -> ``run`` (:func:`~.run.iter_run`: check
the recipe, calibrate, dense perplexity, prune, pruned perplexity, report) -> ``export``. Beside
them: ``checks`` (what a recipe asks that the model cannot do), ``calibration`` and ``evaluation``
(steps a job may also run alone), ``report`` (every report the engine writes), ``job`` (the command
line's load + run + export) and ``history`` (the run database)."""
