"""Layer-wise pruning: the pipeline (a generator of typed events), input capture and replay, the
per-module statistics, one-pass lockstep, the methods and their registry, and the memory estimate of a run."""
