"""The project's metrics: one `evaluate` module (`binary_classification.py`), loaded from its file, offline; the
statistics around them (threshold choice, calibration error, bootstrap intervals) are in `statistics.py`.

`evaluate` (seconds to import) is imported when the module is first loaded, not with this package: the app imports
`statistics.py` (through `plots.py`) and never computes these metrics.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import evaluate

METRIC_PATH = str(Path(__file__).with_name("binary_classification.py"))


@cache
def load_metric() -> evaluate.EvaluationModule:
    """The evaluate module, loaded once per process. In memory: no cache files, no lock clashes between processes."""
    import evaluate

    return evaluate.load(METRIC_PATH, keep_in_memory=True)


def compute_classification_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Metrics of class probabilities `probs` (n, C) against class indices `labels` (n,): the one place the project
    computes them (Trainer's `compute_metrics`, the report)."""
    probs = np.asarray(probs, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"expected probabilities (n, C) and n labels, got shapes {probs.shape} and {labels.shape}")
    return load_metric().compute(predictions=probs, references=labels, threshold=threshold)


__all__ = ["METRIC_PATH", "compute_classification_metrics", "load_metric"]
