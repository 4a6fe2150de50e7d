"""How the project chooses among saved models: each source's validation ROC AUC on the original images and their
mean, the selection metric `train_hf.py` uses while training (`make_compute_metrics`, `source_mean_roc_auc`), for
model directories trained anywhere (a device sweep selects on its repacked images; releases are chosen on the
originals). Used by `recipes/validation_on_originals.py` and `recipes/model_soup.py`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers import EvalPrediction

from .inference import load_classifier, predict_batch
from .training import SOURCE_MEAN_METRIC, DataArguments, make_compute_metrics, prepare_data


@dataclass
class ValidationSet:
    """The validation split of `train_hf.py --dataset ...` with the same split settings: its files, sources and
    labels (1 = the positive class)."""

    paths: list[str]
    sources: np.ndarray
    labels: np.ndarray
    positive: str


def validation_set(datasets: list[str], validation_fraction: float = 0.15, split_seed: int = 42,
                   positive: str = "malignant") -> ValidationSet:
    """Carved per source, stratified and seeded, with the releases' duplicate settings (`--drop_duplicates true
    --near_duplicate_distance 4`, which change only train)."""
    prepared = prepare_data(DataArguments(dataset=list(datasets), validation_fraction=validation_fraction,
                                          split_seed=split_seed, drop_duplicates=True, near_duplicate_distance=4),
                            seed=split_seed)
    if positive not in prepared.labels:
        raise ValueError(f"the positive class {positive!r} is not among the labels {prepared.labels}")
    data = prepared.dataset["validation"].with_format(None)
    if "path" not in data.column_names:
        raise ValueError("validation_set needs image folders (files on disk), not Hub datasets")
    labels = np.array([prepared.labels[label] == positive for label in data["label"]], dtype=int)
    return ValidationSet(list(data["path"]), np.array(data["source"]), labels, positive)


def validation_scores(model_dir: str | Path, data: ValidationSet) -> tuple[np.ndarray, dict[str, float]]:
    """(p(positive) per validation image, {each source's ROC AUC, "mean": their mean}) for a saved model, with its
    own saved processor and calibration (the mean does not depend on the temperature)."""
    model, processor, _ = load_classifier(model_dir)
    rows = predict_batch(model, processor, data.paths)
    probs = np.array([row[f"p_{data.positive}"] for row in rows])
    # log-probabilities as logits: the metric's softmax gives the probabilities back
    log_probs = np.log(np.clip(np.stack([1 - probs, probs], 1), 1e-12, None))
    metrics = make_compute_metrics(data.sources)(EvalPrediction(predictions=log_probs, label_ids=data.labels))
    sources = sorted(set(data.sources.tolist()))
    if len(sources) > 1:
        scores: dict[str, Any] = {s: metrics[f"roc_auc_{s}"] for s in sources if f"roc_auc_{s}" in metrics}
        scores["mean"] = metrics[SOURCE_MEAN_METRIC]
    else:
        scores = {sources[0]: metrics["roc_auc"], "mean": metrics["roc_auc"]}
    return probs, scores
