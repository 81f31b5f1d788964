"""One panel per workflow step: model, calibration, pruning, run, evaluation, history."""
