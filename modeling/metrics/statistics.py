"""Statistics on a model's test predictions: the decision threshold chosen on validation data, the expected
calibration error, and bootstrap confidence intervals, for one model (`bootstrap_ci`) or for the difference between
two on the same images (`paired_bootstrap`).

Point metrics come from the project's `evaluate` module (`modeling.metrics`). The bootstrap needs the same metrics on
a thousand resamples; calling scikit-learn a thousand times takes minutes, so `_batched_metrics` recomputes them with
numpy over all resamples at once (tests check it equals the module on the full sample).
"""

import math
import warnings

import numpy as np
from scipy.stats import bootstrap, rankdata
from sklearn.metrics import precision_recall_curve, roc_curve

ECE_BINS = 10


def _as_arrays(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    """int64 labels (n,) and float32 probabilities (n, C): exactly the numbers the evaluate module sees (it stores
    float32), so thresholds and ties behave the same here and there."""
    labels, probs = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2 or probs.shape[1] < 2 or len(probs) != len(labels) or len(labels) == 0:
        raise ValueError(f"expected probabilities (n, C >= 2) and n labels, got {probs.shape} and {labels.shape}")
    return labels, probs


def _metric_names(num_classes: int) -> list[str]:
    threshold_metrics = ["accuracy", "precision", "recall", "specificity", "f1"]
    if num_classes > 2:
        threshold_metrics.remove("specificity")
    return [*threshold_metrics, "roc_auc", "pr_auc"]


def choose_threshold(labels, probs, method: str = "youden") -> float:
    """Decision threshold on p(class 1), chosen on validation data: `"youden"` maximises sensitivity + specificity - 1
    along the ROC curve, `"f1"` maximises F1 along the precision-recall curve. Returns 0.5 for more than two classes
    (argmax decides there) and, with a warning, when only one class is present."""
    if method not in ("youden", "f1"):
        raise ValueError(f"method must be 'youden' or 'f1', got {method!r}")
    labels, probs = _as_arrays(labels, probs)
    if probs.shape[1] != 2:
        return 0.5
    if labels.min() == labels.max():
        warnings.warn("choose_threshold: only one class present, keeping 0.5", stacklevel=2)
        return 0.5
    score = probs[:, 1]
    if method == "youden":
        fpr, tpr, thresholds = roc_curve(labels, score, drop_intermediate=False)
        # thresholds[0] is +inf (nothing called positive, J = 0): never the answer.
        return float(thresholds[1:][np.argmax((tpr - fpr)[1:])])
    precision, recall, thresholds = precision_recall_curve(labels, score, drop_intermediate=False)
    with np.errstate(invalid="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return float(thresholds[np.argmax(f1[:-1])])  # the last (precision 1, recall 0) point has no threshold


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's `zero_division=0`)."""
    return np.divide(numerator, denominator, out=np.zeros(np.shape(numerator)), where=denominator > 0)


def _batched_roc_auc(positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC of each row via the Mann-Whitney U statistic (average ranks: ties count one half), NaN for rows with
    one class."""
    n_pos = positive.sum(-1)
    n_neg = positive.shape[-1] - n_pos
    u = (rankdata(score, axis=-1) * positive).sum(-1) - n_pos * (n_pos + 1) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_pos * n_neg > 0, u / (n_pos * n_neg), np.nan)


def _batched_average_precision(positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Average precision of each row, as scikit-learn defines it (sum over distinct thresholds of recall increase x
    precision): each positive contributes the precision at the end of its group of tied scores. NaN for one class."""
    order = np.argsort(-score, axis=-1, kind="stable")
    ranked, hits = np.take_along_axis(score, order, -1), np.take_along_axis(positive, order, -1)
    true_positives = np.cumsum(hits, axis=-1)
    n = score.shape[-1]
    position = np.arange(n)
    group_end = np.ones(ranked.shape, dtype=bool)
    group_end[..., :-1] = ranked[..., :-1] != ranked[..., 1:]
    end = np.minimum.accumulate(np.where(group_end, position, n)[..., ::-1], axis=-1)[..., ::-1]
    precision = np.take_along_axis(true_positives, end, -1) / (end + 1)
    n_pos = hits.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((n_pos > 0) & (n_pos < n), (hits * precision).sum(-1) / n_pos, np.nan)


def _batched_ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> np.ndarray:
    """Expected calibration error of each row: sum over equal-width bins of |mean outcome - mean confidence| weighted
    by the bin's share; the bins of `sklearn.calibration.calibration_curve`."""
    rows, n = confidence.shape
    bins = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], confidence)
    flat = (np.arange(rows)[:, None] * n_bins + bins).ravel()
    gaps = np.bincount(flat, weights=(correct - confidence).ravel().astype(np.float64), minlength=rows * n_bins)
    return np.abs(gaps.reshape(rows, n_bins)).sum(-1) / n


def calibration_inputs(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, outcome): p(class 1) and label == 1 for two classes; the top probability and whether the argmax
    is right for more."""
    if probs.shape[-1] == 2:
        return probs[..., 1], (labels == 1)
    return probs.max(-1), (probs.argmax(-1) == labels)


def _batched_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float, index: np.ndarray) -> dict:
    """Every metric of `compute_classification_metrics` plus `ece` for each row of sample indices `index` (B, n)."""
    y, p = labels[index], probs[index]
    num_classes = probs.shape[1]
    if num_classes == 2:
        score = p[..., 1]
        positive, predicted = y == 1, score >= threshold
        tp, fp = (positive & predicted).sum(-1), (~positive & predicted).sum(-1)
        fn, tn = (positive & ~predicted).sum(-1), (~positive & ~predicted).sum(-1)
        metrics = {
            "accuracy": (tp + tn) / y.shape[-1],
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "roc_auc": _batched_roc_auc(positive, score),
            "pr_auc": _batched_average_precision(positive, score),
        }
    else:
        predicted = p.argmax(-1)
        classes = np.arange(num_classes)
        is_true, is_predicted = y[..., None] == classes, predicted[..., None] == classes  # (B, n, C)
        tp, n_true, n_predicted = (is_true & is_predicted).sum(-2), is_true.sum(-2), is_predicted.sum(-2)
        metrics = {
            "accuracy": (predicted == y).mean(-1),
            "precision": _ratio(tp, n_predicted).mean(-1),
            "recall": _ratio(tp, n_true).mean(-1),
            "f1": _ratio(2 * tp, n_true + n_predicted).mean(-1),
            "roc_auc": np.mean([_batched_roc_auc(is_true[..., k], p[..., k]) for k in classes], axis=0),
            "pr_auc": np.mean([_batched_average_precision(is_true[..., k], p[..., k]) for k in classes], axis=0),
        }
    metrics["ece"] = _batched_ece(*calibration_inputs(y, p), ECE_BINS)
    return metrics


def expected_calibration_error(labels, probs, n_bins: int = 10) -> float:
    """ECE with `n_bins` equal-width bins: on p(class 1) for two classes, on the top probability for more."""
    labels, probs = _as_arrays(labels, probs)
    confidence, outcome = calibration_inputs(labels, probs)
    return float(_batched_ece(confidence[None], outcome[None], n_bins)[0])


def _bootstrap(metric_rows, n: int, names: list[str], n_resamples: int, confidence: float, seed: int,
               method: str, memory_width: int) -> tuple[np.ndarray, np.ndarray]:
    """`scipy.stats.bootstrap` over sample indices 0..n-1, vectorised: `metric_rows(index (B, n))` returns
    {name: (B,)}; returns the interval bounds, one per name. NaN statistics of degenerate resamples (an AUC with one
    class) make that interval NaN."""

    def statistic(index: np.ndarray, axis: int = -1) -> np.ndarray:
        index = np.moveaxis(np.asarray(index), axis, -1)
        values = metric_rows(index.reshape(-1, index.shape[-1]))
        return np.stack([values[name].reshape(index.shape[:-1]) for name in names])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = bootstrap((np.arange(n),), statistic, n_resamples=n_resamples,
                           batch=max(1, min(n_resamples, memory_width // n)),  # bounds memory: batch x n x C at once
                           vectorized=True, confidence_level=confidence, method=method,
                           rng=np.random.default_rng(seed))
    return result.confidence_interval


def bootstrap_ci(
    labels,
    probs,
    threshold: float = 0.5,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
) -> dict[str, tuple[float, float]]:
    """Bootstrap confidence intervals (`scipy.stats.bootstrap`, percentile by default, `method="BCa"` also works) of
    every metric of `compute_classification_metrics` and of `ece`. Resamples (label, probability) rows together.
    An interval is NaN where some resample leaves a metric undefined (e.g. an AUC with one class)."""
    labels, probs = _as_arrays(labels, probs)
    names = [*_metric_names(probs.shape[1]), "ece"]
    low, high = _bootstrap(lambda index: _batched_metrics(labels, probs, threshold, index), len(labels), names,
                           n_resamples, confidence, seed, method, memory_width=2_000_000)
    return {name: (float(lo), float(hi)) for name, lo, hi in zip(names, low, high, strict=True)}


def paired_bootstrap(
    labels,
    probs_a,
    probs_b,
    threshold_a: float = 0.5,
    threshold_b: float = 0.5,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float | list[float]]]:
    """Model A minus model B on the same samples: for every metric, the difference and its percentile-bootstrap
    interval, resampling images (not models) so the pairing is kept. Each model uses its own threshold."""
    labels, probs_a = _as_arrays(labels, probs_a)
    _, probs_b = _as_arrays(labels, probs_b)
    if probs_a.shape != probs_b.shape:
        raise ValueError(f"the two models' probabilities differ in shape: {probs_a.shape} vs {probs_b.shape}")
    names = [*_metric_names(probs_a.shape[1]), "ece"]

    def difference(index: np.ndarray) -> dict[str, np.ndarray]:
        a = _batched_metrics(labels, probs_a, threshold_a, index)
        b = _batched_metrics(labels, probs_b, threshold_b, index)
        return {name: a[name] - b[name] for name in names}

    n = len(labels)
    point = difference(np.arange(n)[None])
    low, high = _bootstrap(difference, n, names, n_resamples, confidence, seed, "percentile", memory_width=1_000_000)
    return finite_or_none({name: {"delta": float(point[name][0]), "ci95": [float(lo), float(hi)]}
                           for name, lo, hi in zip(names, low, high, strict=True)})


def finite_or_none(value):
    """JSON has no NaN: undefined metrics are written (and returned) as null."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


__all__ = [
    "ECE_BINS",
    "bootstrap_ci",
    "calibration_inputs",
    "choose_threshold",
    "expected_calibration_error",
    "finite_or_none",
    "paired_bootstrap",
]
