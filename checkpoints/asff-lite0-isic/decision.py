"""The decision rule, in one place. A model's config holds `temperature` (calibration, fitted on validation) and
`decision_threshold` (on the calibrated p(class 1), chosen on validation); every caller (app, batch CLI, pipeline,
report) turns logits into probabilities and a class with these functions.

Self-contained (numpy; torch only where a function is given tensors): it is shipped beside the remote-code pipeline
in saved model directories, and onnxruntime predictions use it without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

DEFAULT_THRESHOLD = 0.5
DEFAULT_TEMPERATURE = 1.0


def decision_threshold(config: Any) -> float:
    """The config's `decision_threshold` (on calibrated p(class 1)); 0.5 when it has none."""
    value = getattr(config, "decision_threshold", None)
    return DEFAULT_THRESHOLD if value is None else float(value)


def temperature(config: Any) -> float:
    """The config's calibration `temperature`; 1 (raw softmax) when it has none."""
    value = getattr(config, "temperature", None)
    return DEFAULT_TEMPERATURE if value is None else float(value)


def calibrated_probabilities(logits: torch.Tensor | np.ndarray,
                             temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """softmax(logits / T) in float32, over the last axis (temperature scaling, Guo et al. 2017), as a tensor."""
    import torch

    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return (torch.as_tensor(logits).float() / float(temperature)).softmax(-1)


def calibrated_probabilities_numpy(logits: np.ndarray, temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
    """`calibrated_probabilities` in numpy (float32; equal to within float32 rounding), for onnxruntime outputs."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    scaled = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    exp = np.exp(scaled - scaled.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def check_threshold(threshold: float) -> float:
    """The threshold as a float; a ValueError when it is not a probability (a threshold above 1 would decide every
    image one way without a word)."""
    value = float(threshold)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"the decision threshold is a probability, between 0 and 1; got {threshold}")
    return value


def decide(probs: torch.Tensor | np.ndarray | Sequence[float], threshold: float = DEFAULT_THRESHOLD) -> int:
    """Class index for one image: binary models predict class 1 when p(class 1) >= threshold; others the argmax."""
    probs = np.asarray(probs, dtype=np.float64)
    return int(decide_batch(probs[None], threshold)[0])


def decide_batch(probs: torch.Tensor | np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Class indices for (N, C) probabilities, by the rule of `decide`."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be (N, num_labels), got shape {probs.shape}")
    if probs.shape[1] == 2:
        return (probs[:, 1] >= check_threshold(threshold)).astype(np.int64)
    return probs.argmax(1).astype(np.int64)


__all__ = [
    "DEFAULT_TEMPERATURE",
    "DEFAULT_THRESHOLD",
    "calibrated_probabilities",
    "calibrated_probabilities_numpy",
    "check_threshold",
    "decide",
    "decide_batch",
    "decision_threshold",
    "temperature",
]
