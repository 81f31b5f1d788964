"""Calibration data: reading text sources, cutting token windows, self-generation, the
:class:`~.calibset.CalibrationSet` that carries samples and their provenance, and scoring how close a set is
to the model's own training data."""
