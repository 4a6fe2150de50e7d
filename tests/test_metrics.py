"""The evaluate module: values against hand-computed and scikit-learn numbers, degenerate input, offline loading."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from modeling.metrics import METRIC_PATH, compute_classification_metrics, load_metric

BINARY_KEYS = {"accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc"}


def two_class(p1) -> np.ndarray:
    p1 = np.asarray(p1, dtype=np.float64)
    return np.stack([1 - p1, p1], axis=1)


def test_binary_values_by_hand():
    # threshold 0.5 -> predictions [0, 1, 0, 1]: one of each of tp, fp, fn, tn.
    probs, labels = two_class([0.1, 0.6, 0.4, 0.9]), np.array([0, 0, 1, 1])
    result = compute_classification_metrics(probs, labels)
    assert set(result) == BINARY_KEYS
    for name in ("accuracy", "precision", "recall", "specificity", "f1"):
        assert result[name] == pytest.approx(0.5)
    assert result["roc_auc"] == pytest.approx(0.75)  # 3 of the 4 (positive, negative) pairs ranked right
    assert result["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_threshold_moves_threshold_metrics_only():
    probs, labels = two_class([0.1, 0.6, 0.4, 0.9]), np.array([0, 0, 1, 1])
    at_half = compute_classification_metrics(probs, labels, threshold=0.5)
    low = compute_classification_metrics(probs, labels, threshold=0.35)  # predictions [0, 1, 1, 1]
    assert (low["recall"], low["specificity"]) == (pytest.approx(1.0), pytest.approx(0.5))
    assert low["roc_auc"] == at_half["roc_auc"] and low["pr_auc"] == at_half["pr_auc"]
    # The threshold itself counts as positive (p >= threshold).
    assert compute_classification_metrics(probs, labels, threshold=0.4)["recall"] == pytest.approx(1.0)


def test_binary_matches_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    p1 = np.clip(0.3 * labels + 0.7 * rng.random(200), 0, 1).astype(np.float32)
    result = compute_classification_metrics(two_class(p1), labels, threshold=0.45)
    predicted = (p1 >= np.float32(0.45)).astype(int)
    assert result["precision"] == pytest.approx(precision_score(labels, predicted))
    assert result["recall"] == pytest.approx(recall_score(labels, predicted))
    assert result["specificity"] == pytest.approx(recall_score(labels, predicted, pos_label=0))
    assert result["f1"] == pytest.approx(f1_score(labels, predicted))
    assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, p1))
    assert result["pr_auc"] == pytest.approx(average_precision_score(labels, p1))


def test_multiclass_macro_metrics():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 150)
    probs = rng.dirichlet([1, 1, 1], 150) + np.eye(3)[labels]
    probs /= probs.sum(1, keepdims=True)
    result = compute_classification_metrics(probs, labels, threshold=0.9)  # ignored: argmax
    assert set(result) == {"accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc"}
    predicted = probs.argmax(1)
    assert result["accuracy"] == pytest.approx((predicted == labels).mean())
    assert result["precision"] == pytest.approx(precision_score(labels, predicted, average="macro"))
    assert result["f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    expected_roc_auc = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert result["roc_auc"] == pytest.approx(expected_roc_auc, abs=1e-6)
    expected_pr_auc = average_precision_score(np.eye(3)[labels], probs, average="macro")
    assert result["pr_auc"] == pytest.approx(expected_pr_auc, abs=1e-6)


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_gives_nan_aucs(label):
    result = compute_classification_metrics(two_class([0.2, 0.7, 0.4]), np.full(3, label))
    assert math.isnan(result["roc_auc"]) and math.isnan(result["pr_auc"])
    assert result["accuracy"] == pytest.approx(2 / 3 if label == 0 else 1 / 3)


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r"expected probabilities \(n, C\) and n labels, got shapes \(2,\)"):
        compute_classification_metrics(np.array([0.1, 0.9]), np.array([0, 1]))  # not (n, C)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 2\), got \[0 2\]"):
        compute_classification_metrics(two_class([0.1, 0.9]), np.array([0, 2]))  # label out of range


def test_module_is_an_evaluate_metric():
    import evaluate

    metric = load_metric()
    assert isinstance(metric, evaluate.Metric) and load_metric() is metric
    result = metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 1], threshold=0.5)
    assert result["accuracy"] == 1.0


@pytest.mark.slow  # a fresh Python importing evaluate
def test_loads_offline_in_a_fresh_process(tmp_path):
    """`evaluate.load(METRIC_PATH)` with the Hub unreachable and an empty cache."""
    code = (
        "import evaluate, sys; m = evaluate.load(sys.argv[1]);"
        "print(m.compute(predictions=[[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], references=[0, 1, 1])['roc_auc'])"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", code, METRIC_PATH], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip().splitlines()[-1]) == pytest.approx(1.0)
