"""The four task classes: Estimator, Generator, Editor, Describer."""
