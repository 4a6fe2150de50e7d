"""Fitting what turns a trained model's logits into honest outputs, on held-out data: the calibration temperature
(validation), the decision threshold (validation) and the out-of-distribution statistics (train features, validation
threshold). The results go into the model's config and buffers, so that `from_pretrained` brings them along.

    python -m modeling.calibration MODEL_DIR --dataset FOLDER [--output_dir OUT]

fits them for an existing model directory (e.g. one trained before this existed), using the split settings its
`metrics.json` recorded, so that validation is the same split training selected on.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
# Fewer validation images of the rarer class than this, and the fitted temperature, threshold and OOD threshold are
# mostly noise (a handful of images is often separable: T goes to its bound and the threshold to 0 or 1).
MIN_CALIBRATION_PER_CLASS = 20


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(logits / T) (Guo et al. 2017), searched on
    log T in [0.05, 20] (bounded: a separable validation set would otherwise send T to 0)."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.int64)
    if len(logits) == 0 or len(np.unique(labels)) < 2:
        logger.warning("fit_temperature: needs both classes in the validation labels; keeping T = 1")
        return 1.0

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / math.exp(log_t), axis=1)[np.arange(len(labels)), labels].mean())

    result = minimize_scalar(nll, bounds=(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)), method="bounded")
    temperature = float(math.exp(result.x))
    # Near a bound (the likelihood is flat there: the search stops short of it), T is an artefact of the data, not
    # a calibration. Near the lower bound the validation images are separable (sharpening always helps); near the
    # upper one the logits carry next to no information about the labels (flattening to p = 1/K always helps).
    if temperature <= 2 * MIN_TEMPERATURE:
        logger.warning("fit_temperature: T = %.3g is near its lower bound %g: the %d validation images are (nearly) "
                       "separable or too few to calibrate on; treat the calibrated probabilities with caution",
                       temperature, MIN_TEMPERATURE, len(labels))
    elif temperature >= MAX_TEMPERATURE / 2:
        logger.warning("fit_temperature: T = %.3g is near its upper bound %g: on the %d validation images the logits "
                       "barely tell the classes apart (an untrained or collapsed model?), so the calibrated "
                       "probabilities are near 1/%d whatever the image", temperature, MAX_TEMPERATURE, len(labels),
                       logits.shape[1])
    return temperature


@dataclass
class FeatureSet:
    """What one pass over a split gives: raw logits, the features the OOD score measures (the pooled features, or
    `outputs.ood_features`), labels (and OOD scores when the model has a scorer)."""

    logits: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    ood_scores: np.ndarray | None = None


@torch.no_grad()
def collect_features(model: nn.Module, batches: Iterable[dict], desc: str = "features") -> FeatureSet:
    """Runs the model (eval mode) over batches of `{"pixel_values", "labels"}` (e.g. a DataLoader with the
    project's `collate_fn` over a split with the eval transform)."""
    model.eval()
    device = next(model.parameters()).device
    logits, features, labels, scores = [], [], [], []
    for batch in tqdm(batches, desc=desc, unit="batch"):
        out = model(pixel_values=batch["pixel_values"].to(device))
        logits.append(out.logits.float().cpu().numpy())
        scored = getattr(out, "ood_features", None)  # what the OOD score measures (config.ood_feature)
        features.append((scored if scored is not None else out.pooler_output).float().cpu().numpy())
        labels.append(np.asarray(batch["labels"]))
        if getattr(out, "ood_score", None) is not None:
            scores.append(out.ood_score.float().cpu().numpy())
    return FeatureSet(np.concatenate(logits), np.concatenate(features), np.concatenate(labels),
                      np.concatenate(scores) if scores else None)


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means and the precision of the covariance shared by the classes (Ledoit-Wolf shrinkage: the feature
    size can exceed what a few thousand images estimate well)."""
    from sklearn.covariance import LedoitWolf

    features, labels = np.asarray(features, np.float64), np.asarray(labels)
    missing = sorted(set(range(num_labels)) - set(labels.tolist()))
    if missing:
        raise ValueError(f"fitting OOD statistics needs training images of every class; none of class(es) {missing}")
    means = np.stack([features[labels == c].mean(0) for c in range(num_labels)])
    centred = features - means[labels]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    return means.astype(np.float32), precision.astype(np.float32)


def attach_ood_scorer(model: nn.Module, means: np.ndarray, precision: np.ndarray) -> None:
    """Gives an ASFF-ResNet classifier a fitted Mahalanobis scorer (config.ood_method = "mahalanobis")."""
    from .modeling_asff_resnet import AsffMahalanobisScorer

    scorer = AsffMahalanobisScorer(precision.shape[0], means.shape[0])
    scorer.class_means.copy_(torch.from_numpy(means))
    scorer.precision.copy_(torch.from_numpy(precision))
    model.ood_scorer = scorer.to(next(model.parameters()).device)
    model.config.ood_method = "mahalanobis"


def supports_ood(model: nn.Module) -> bool:
    return hasattr(model, "asff_resnet")


@dataclass
class Calibration:
    temperature: float
    ood_threshold: float | None
    validation: FeatureSet  # raw logits, features, labels and (when fitted) OOD scores of the validation split


def fit_calibration(model: nn.Module, train_batches: Iterable[dict] | None, validation_batches: Iterable[dict],
                    pass_rate: float | None = None) -> Calibration:
    """Fits the temperature on validation and, for ASFF-ResNets with training batches, the OOD statistics on train
    and their threshold on validation (the `pass_rate` quantile of validation scores). Writes `temperature`,
    `ood_method`, `ood_threshold` and `ood_pass_rate` into `model.config`; the threshold is the caller's (it is
    chosen on the calibrated probabilities this returns the temperature for)."""
    validation = collect_features(model, validation_batches, desc="validation")
    counts = np.bincount(validation.labels.astype(int), minlength=model.config.num_labels)
    rarer = int(counts.min()) if len(validation.labels) else 0
    if rarer < MIN_CALIBRATION_PER_CLASS:
        logger.warning("calibration: the validation split has %d image(s) of its rarer class (fewer than %d): the "
                       "temperature, decision threshold and OOD threshold fitted on it are unreliable; give a larger "
                       "validation split (--validation_fraction, or a validation/ folder)", rarer,
                       MIN_CALIBRATION_PER_CLASS)
    temperature = fit_temperature(validation.logits, validation.labels)
    model.config.temperature = temperature
    ood_threshold = None
    if train_batches is not None and supports_ood(model):
        train = collect_features(model, train_batches, desc="train")
        means, precision = fit_mahalanobis(train.features, train.labels, model.config.num_labels)
        attach_ood_scorer(model, means, precision)
        with torch.no_grad():
            scores = model.ood_scorer(torch.from_numpy(validation.features).to(next(model.parameters()).device))
        validation.ood_scores = scores.cpu().numpy()
        rate = pass_rate if pass_rate is not None else getattr(model.config, "ood_pass_rate", 0.95)
        ood_threshold = float(np.quantile(validation.ood_scores, rate))
        model.config.ood_threshold = ood_threshold
        model.config.ood_pass_rate = rate
    logger.info("calibration: temperature %.3f, OOD threshold %s", temperature, ood_threshold)
    return Calibration(temperature, ood_threshold, validation)


def legacy_card_threshold(model_dir: Path) -> float | None:
    """The raw-probability threshold that models saved before the config held it wrote into their card."""
    from .model_card import read_model_card

    config = json.loads((model_dir / "config.json").read_text())
    if "decision_threshold" in config:
        return None
    value = read_model_card(model_dir)[1].get("decision_threshold")
    return None if value is None else float(value)


def calibrated_threshold(raw_threshold: float, temperature: float) -> float:
    """The calibrated-probability threshold that makes exactly the decisions `raw_threshold` made on the raw softmax
    (binary: p_T = sigmoid(logit(p) / T) is monotone in p)."""
    raw = min(max(raw_threshold, 1e-12), 1 - 1e-12)
    return float(1 / (1 + math.exp(-math.log(raw / (1 - raw)) / temperature)))


def flagged_share(model: nn.Module, processor, images: list, batch_size: int = 32) -> float:
    """Share of images (PIL) whose OOD score is above the model's threshold."""
    from .image_utils import to_rgb
    from .inference import ood_threshold, run_model

    threshold = ood_threshold(model)
    if threshold is None:
        raise ValueError("the model has no OOD score")
    scores = []
    for start in range(0, len(images), batch_size):
        chunk = [to_rgb(image) for image in images[start : start + batch_size]]
        scores.append(run_model(model, processor(images=chunk, return_tensors="pt")["pixel_values"]).ood_scores)
    return float((torch.cat(scores) > threshold).float().mean())


def calibrate_saved_model(model_dir: str | Path, dataset: str, output_dir: str | Path | None = None,
                          batch_size: int = 32, validation_fraction: float | None = None,
                          split_seed: int | None = None, drop_duplicates: bool | None = None) -> dict:
    """Fits temperature, decision threshold and OOD statistics for a saved model directory and saves it (in place,
    or into `output_dir`), keeping its weights' precision. The split settings default to those its `metrics.json`
    records, so that validation is the split training selected on. A threshold recorded in the card of a model
    saved before the config held it is kept (mapped onto calibrated probabilities: the same decisions); otherwise
    the threshold is chosen on validation (Youden's J). Returns what was fitted and measured."""
    from safetensors import safe_open
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from .data import build_dataset_dict, in_model_label_order
    from .decision import calibrated_probabilities
    from .metrics.statistics import choose_threshold, expected_calibration_error

    model_dir = Path(model_dir)
    output_dir = Path(output_dir) if output_dir else model_dir
    metrics_path = model_dir / "metrics.json"
    settings = json.loads(metrics_path.read_text()).get("settings", {}) if metrics_path.is_file() else {}
    model = AutoModelForImageClassification.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32)
    processor = AutoImageProcessor.from_pretrained(model_dir)
    prepared = build_dataset_dict(
        dataset,
        validation_fraction=settings.get("validation_fraction", 0.15) if validation_fraction is None
        else validation_fraction,
        seed=settings.get("split_seed", 42) if split_seed is None else split_seed,
        drop_cross_split_duplicates=settings.get("drop_duplicates", False) if drop_duplicates is None
        else drop_duplicates)
    in_model_label_order(prepared, [model.config.id2label[i] for i in range(model.config.num_labels)])
    from .training import eval_batches

    legacy = legacy_card_threshold(model_dir)
    calibration = fit_calibration(model, eval_batches(prepared.dataset["train"], processor, batch_size),
                                  eval_batches(prepared.dataset["validation"], processor, batch_size))
    validation = calibration.validation
    probs = calibrated_probabilities(validation.logits, calibration.temperature).numpy()
    if legacy is not None and model.config.num_labels == 2:
        threshold, source = calibrated_threshold(legacy, calibration.temperature), "model card (kept, calibrated)"
    else:
        threshold, source = choose_threshold(validation.labels, probs), "validation (youden)"
    model.config.decision_threshold = threshold
    summary = {
        "temperature": calibration.temperature, "decision_threshold": threshold, "threshold_source": source,
        "validation_ece_before": expected_calibration_error(validation.labels, softmax(validation.logits, axis=1)),
        "validation_ece_after": expected_calibration_error(validation.labels, probs),
        "ood_method": model.config.ood_method, "ood_threshold": calibration.ood_threshold,
        "ood_pass_rate": getattr(model.config, "ood_pass_rate", None),
        "split": {"dataset": dataset, **{k: len(v) for k, v in prepared.dataset.items()}},
    }
    if "test" in prepared.dataset and calibration.ood_threshold is not None:
        test = collect_features(model, eval_batches(prepared.dataset["test"], processor, batch_size), desc="test")
        summary["test_flagged"] = float((test.ood_scores > calibration.ood_threshold).mean())
        summary["test_ece_before"] = expected_calibration_error(test.labels, softmax(test.logits, axis=1))
        summary["test_ece_after"] = expected_calibration_error(
            test.labels, calibrated_probabilities(test.logits, calibration.temperature).numpy())
    if calibration.ood_threshold is not None:
        from .ood_probes import skimage_photos, synthetic_images

        summary["synthetic_flagged"] = flagged_share(model, processor, list(synthetic_images().values()))
        photos = skimage_photos()
        if photos:
            summary["photos_flagged"] = flagged_share(model, processor, list(photos.values()))
    with safe_open(model_dir / "model.safetensors", "pt") as weights:
        half = any(weights.get_slice(k).get_dtype() == "F16" for k in weights.keys())
    _save(model, processor, model_dir, output_dir, half)
    if metrics_path.is_file() or output_dir != model_dir:
        recorded = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        recorded["calibration"] = summary
        (output_dir / "metrics.json").write_text(json.dumps(recorded, indent=2, default=str))
    return summary


def _save(model: nn.Module, processor, source: Path, destination: Path, half: bool) -> None:
    """Saves weights (float16 when the source was, the OOD statistics always float32), config, code and processor;
    other files of the source (card, report, metrics) are copied when saving elsewhere."""
    import shutil

    from .pipeline_asff_resnet import add_pipeline_to

    if destination != source:
        shutil.copytree(source, destination, dirs_exist_ok=True)
    if half:
        model.to(torch.float16)
        if getattr(model, "ood_scorer", None) is not None:
            model.ood_scorer.float()  # a precision matrix in float16 would lose the small-variance directions
    model.save_pretrained(destination)
    processor.save_pretrained(destination)
    add_pipeline_to(destination)
    if half:  # `from_pretrained` casts back to float32
        config_path = destination / "config.json"
        config = json.loads(config_path.read_text())
        config["dtype"] = "float32"
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="a model directory saved by train_hf.py (or a release)")
    parser.add_argument("--dataset", required=True, help="the image folder the model was trained on")
    parser.add_argument("--output_dir", type=Path, help="where to save (default: in place)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--validation_fraction", type=float, help="default: as recorded in metrics.json, else 0.15")
    parser.add_argument("--split_seed", type=int, help="default: as recorded in metrics.json, else 42")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    summary = calibrate_saved_model(args.model_dir, args.dataset, args.output_dir, args.batch_size,
                                    args.validation_fraction, args.split_seed)
    print(json.dumps(summary, indent=2, default=str))



__all__ = [
    "Calibration",
    "FeatureSet",
    "attach_ood_scorer",
    "calibrate_saved_model",
    "calibrated_threshold",
    "collect_features",
    "fit_calibration",
    "fit_mahalanobis",
    "fit_temperature",
]


if __name__ == "__main__":
    main()
