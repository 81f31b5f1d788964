"""Measuring a model: perplexity with the papers' conventions (suites, a cache of dense results) and
zero-shot multiple-choice accuracy."""
