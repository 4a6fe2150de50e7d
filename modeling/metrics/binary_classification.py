"""Classification metrics from class probabilities, as an `evaluate` module.

Self-contained on purpose: `evaluate.load(path_to_this_file)` copies this file alone into its cache, so it imports
only numpy, scikit-learn, datasets and evaluate. Every number comes from scikit-learn.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.preprocessing import label_binarize

_DESCRIPTION = """
Classification metrics computed from predicted class probabilities (one row of C probabilities per example).
Two classes (class 1 is the positive one, e.g. malignant): accuracy, precision, recall (sensitivity), specificity
and f1 of `p(class 1) >= threshold`, plus the threshold-free roc_auc and pr_auc (average precision) of p(class 1).
More than two classes: accuracy and macro precision / recall / f1 of the argmax, macro one-vs-rest roc_auc and
pr_auc (`threshold` is ignored). AUCs are NaN when a class is absent from the references (undefined, not an error).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): class probabilities, shape (n, C), rows summing to one.
    references (`list` of `int`): true class indices in [0, C).
    threshold (`float`, defaults to 0.5): decision threshold on p(class 1) (two classes only).
Returns:
    `dict[str, float]`: accuracy, precision, recall, f1, roc_auc, pr_auc, and specificity for two classes.
Examples:
    >>> metric = evaluate.load("modeling/metrics/binary_classification.py")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 1], threshold=0.5)["accuracy"]
    1.0
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and others},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


def _threshold_free(metric, target: np.ndarray, score: np.ndarray) -> float:
    """A ranking metric of one binary problem; NaN when only one class is present (undefined)."""
    if target.min() == target.max():
        return float("nan")
    return float(metric(target, score))


def classification_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The metrics of the module for probabilities `probs` (n, C) and class indices `labels` (n,)."""
    probs, labels = np.asarray(probs), np.asarray(labels).astype(np.int64)
    if probs.ndim != 2 or probs.shape[1] < 2 or len(probs) != len(labels) or len(labels) == 0:
        raise ValueError(
            f"expected probabilities (n, C >= 2) and n labels, got shapes {probs.shape} and {labels.shape}"
        )
    num_classes = probs.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be class indices in [0, {num_classes}), got {np.unique(labels)}")
    if num_classes == 2:
        score = probs[:, 1]
        predicted = (score >= threshold).astype(np.int64)
        return {
            "accuracy": float(accuracy_score(labels, predicted)),
            "precision": float(precision_score(labels, predicted, pos_label=1, zero_division=0)),
            "recall": float(recall_score(labels, predicted, pos_label=1, zero_division=0)),
            "specificity": float(recall_score(labels, predicted, pos_label=0, zero_division=0)),
            "f1": float(f1_score(labels, predicted, pos_label=1, zero_division=0)),
            "roc_auc": _threshold_free(roc_auc_score, labels, score),
            "pr_auc": _threshold_free(average_precision_score, labels, score),
        }
    predicted = probs.argmax(axis=1)
    classes = list(range(num_classes))
    onehot = label_binarize(labels, classes=classes)
    # Macro one-vs-rest = the unweighted mean over classes (what sklearn's `average="macro"` does); NaN if any
    # class is absent, since its one-vs-rest problem is then undefined.
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "precision": float(precision_score(labels, predicted, labels=classes, average="macro", zero_division=0)),
        "recall": float(recall_score(labels, predicted, labels=classes, average="macro", zero_division=0)),
        "f1": float(f1_score(labels, predicted, labels=classes, average="macro", zero_division=0)),
        "roc_auc": float(np.mean([_threshold_free(roc_auc_score, onehot[:, k], probs[:, k]) for k in classes])),
        "pr_auc": float(
            np.mean([_threshold_free(average_precision_score, onehot[:, k], probs[:, k]) for k in classes])
        ),
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BinaryClassification(evaluate.Metric):
    """Accuracy, precision, recall, specificity, f1, ROC AUC and PR AUC from class probabilities."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html"],
        )

    def _compute(self, predictions, references, threshold: float = 0.5) -> dict[str, float]:
        return classification_metrics(np.asarray(predictions, dtype=np.float32), np.asarray(references), threshold)
