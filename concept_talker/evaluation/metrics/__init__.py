"""Metric modules kept in the project, loaded offline with `evaluate.load(path)` (`evaluate.load("wer")` would
download its script from the Hub). `load_metric("error_rate")` gives the path-based module."""

from __future__ import annotations

import os

METRICS_DIR = os.path.dirname(os.path.abspath(__file__))


def load_metric(name: str):
    """`evaluate.load` of one of this folder's metrics: `error_rate` (WER, CER) or `code_accuracy`."""
    import evaluate

    path = os.path.join(METRICS_DIR, name, f"{name}.py")
    if not os.path.isfile(path):
        raise ValueError(f"No metric {name!r} in {METRICS_DIR}: use 'error_rate' or 'code_accuracy'.")
    return evaluate.load(path)
