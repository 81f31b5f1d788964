"""One run path, shared by the command line, the desktop app and experiment grids: load a model, run a
recipe on it (calibrate, evaluate dense, prune, evaluate pruned), build its report, export it, and keep it in
the history."""
