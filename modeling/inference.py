"""Inference for the app, the batch CLI and the pipeline: loading a saved classifier, calibrated probabilities (with
optional test-time augmentation and its spread), the thresholded decision, the out-of-distribution flag, batches and
CSV. The decision rule itself lives in `modeling.decision`; its settings in the model's config.

Predictions run on the torch model, or on an onnxruntime graph of it (`backend`, an `OnnxClassifier` from
`modeling.onnx_runtime.load_backend`): the same outputs, decided by the same rule from the same config."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import AutoImageProcessor, AutoModelForImageClassification

from . import AsffResNetConfig  # noqa: F401  (importing the package registers the Auto classes)
from .decision import calibrated_probabilities, decision_threshold, temperature
from .image_utils import ImageLoadError, ImageSource, load_image
from .model_card import read_model_card
from .onnx_runtime import OnnxClassifier, backend_name
from .prediction import (
    MODEL_LOCK,
    OOD_WARNING,
    ModelInfo,
    Prediction,
    check_model_source,
    local_model_dir,
    model_name,
)
from .prediction import make_prediction as prediction_from
from .prediction import tta_views as tta_views_numpy


def load_classifier(model_id_or_dir: str | Path) -> tuple[nn.Module, Any, ModelInfo]:
    """Loads a saved classifier (directory or Hub id) and its image processor, in eval mode and float32.

    Parameters are frozen (`requires_grad=False`): Grad-CAM then needs gradients only from the target layer up.
    The decision threshold, temperature and OOD threshold come from the config (`modeling.decision`); the model card is
    shown to users but never read for the decision.
    """
    source = str(model_id_or_dir)
    check_model_source(source)  # a mistyped local path: a clear error now, not a Hub lookup
    model = AutoModelForImageClassification.from_pretrained(source, trust_remote_code=True, dtype=torch.float32)
    model = model.float().eval().requires_grad_(False)
    processor = AutoImageProcessor.from_pretrained(source)
    card_text, card_data = read_model_card(source)
    config = model.config
    info = ModelInfo(
        source=source,
        name=model_name(source),
        model_type=config.model_type,
        fusion_mode=getattr(config, "fusion_mode", None) if hasattr(model, "asff_resnet") else None,
        id2label={int(k): v for k, v in config.id2label.items()},
        decision_threshold=decision_threshold(config),
        temperature=temperature(config),
        ood_threshold=ood_threshold(model),
        image_size=getattr(config, "image_size", None),
        num_parameters=sum(p.numel() for p in model.parameters()),
        card_text=card_text,
        card_data=card_data,
    )
    return model, processor, info


def ood_threshold(model: nn.Module) -> float | None:
    """The config's OOD threshold when the model computes an OOD score, else None."""
    if getattr(model, "ood_scorer", None) is None:
        return None
    value = getattr(model.config, "ood_threshold", None)
    return None if value is None else float(value)


class LogitsOnly(nn.Module):
    """pytorch-grad-cam expects a model returning a tensor; keeps the last full output (fusion weights, OOD score)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.last_output = None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.last_output = self.model(pixel_values=pixel_values)
        return getattr(self.last_output, "logits", self.last_output)


def pixel_values(processor, image: Image.Image) -> torch.Tensor:
    return processor(images=image, return_tensors="pt")["pixel_values"].float()


def tta_views(pixel_values: torch.Tensor) -> torch.Tensor:
    """`modeling.prediction.tta_views` for a tensor: the 8 dihedral views of a square crop, the identity first."""
    return torch.from_numpy(tta_views_numpy(pixel_values.cpu().numpy()))


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass
class BatchOutput:
    """Per image: calibrated probabilities (mean over views), per-view probabilities (with TTA), OOD scores."""

    probs: torch.Tensor  # (B, C)
    view_probs: torch.Tensor | None  # (B, V, C) with TTA
    ood_scores: torch.Tensor | None  # (B,), of the original view


def run_model(model: nn.Module, pixel_values: torch.Tensor, tta: bool = False,
              backend: OnnxClassifier | None = None) -> BatchOutput:
    """One forward over a batch (all views at once with `tta`), on `backend` (an onnxruntime graph of `model`) when
    given, else on the torch model."""
    batch = pixel_values.shape[0]
    inputs = torch.cat([tta_views(x[None]) for x in pixel_values]) if tta else pixel_values
    with MODEL_LOCK, torch.no_grad():
        output = model(pixel_values=inputs.to(device_of(model))) if backend is None else backend(pixel_values=inputs)
    logits = getattr(output, "logits", output)
    probs = calibrated_probabilities(logits.cpu(), temperature(model.config))
    views = probs.view(batch, -1, probs.shape[-1])
    scores = getattr(output, "ood_score", None)
    if scores is not None:
        scores = scores.float().cpu().view(batch, -1)[:, 0]  # the identity view: what the image is, not a rotation
    return BatchOutput(views.mean(1), views if tta else None, scores)


def probabilities(model: nn.Module, pixel_values: torch.Tensor, tta: bool = False,
                  backend: OnnxClassifier | None = None) -> torch.Tensor:
    """(B, num_labels) calibrated probabilities; with `tta`, averaged over the views of `tta_views`."""
    return run_model(model, pixel_values, tta, backend).probs


def make_prediction(model: nn.Module, probs: torch.Tensor, threshold: float | None = None,
                    view_probs: torch.Tensor | None = None, ood_score: float | None = None) -> Prediction:
    """A `Prediction` from one image's calibrated probabilities (and its TTA views and OOD score)."""
    threshold = decision_threshold(model.config) if threshold is None else float(threshold)
    return prediction_from(probs, model.config.id2label, threshold, view_probs, ood_score, ood_threshold(model))


def predict(model: nn.Module, processor, image: ImageSource, tta: bool = False,
            threshold: float | None = None, backend: OnnxClassifier | None = None) -> Prediction:
    """Calibrated probabilities, decision, OOD flag (and TTA spread) for one image (any input `load_image` takes);
    on `backend` (onnxruntime) when given, else torch."""
    pixels = pixel_values(processor, load_image(image))
    if backend is not None:
        return backend.predict(pixels.numpy(), tta, threshold)
    out = run_model(model, pixels, tta, backend)
    return make_prediction(model, out.probs[0], threshold, None if out.view_probs is None else out.view_probs[0],
                           None if out.ood_scores is None else out.ood_scores[0])


CSV_SETTINGS = ("model", "threshold", "tta", "backend")


def predict_batch(
    model: nn.Module,
    processor,
    paths: Sequence[str | Path],
    threshold: float | None = None,
    tta: bool = False,
    batch_size: int = 16,
    names: Sequence[str] | None = None,
    progress: Callable[[int], Any] | None = None,
    model_id: str | None = None,
    backend: OnnxClassifier | None = None,
) -> list[dict[str, Any]]:
    """One row per file: `file` (`names`, e.g. paths relative to the folder; else the paths), `label`, `p_<label>` per
    class, `p_spread` (TTA), `in_distribution`, `ood_score`, `error` (empty when fine) and the settings that produced
    it (`model`, `threshold`, `tta`, `backend`: torch, or onnx / onnx-int8 when `backend` runs it). A file that
    cannot be read gets its error and empty values; the others are still processed, out-of-distribution images
    included (flagged, not refused). `progress(n)` follows every chunk."""
    threshold = decision_threshold(model.config) if threshold is None else float(threshold)
    id2label = model.config.id2label
    names = [str(p) for p in paths] if names is None else list(names)
    if len(names) != len(paths):
        raise ValueError(f"{len(names)} names for {len(paths)} files")
    settings = {"model": model_id or model_name(getattr(model, "name_or_path", "") or "model"),
                "threshold": round(threshold, 6), "tta": bool(tta), "backend": backend_name(backend)}
    rows = []
    for start in range(0, len(paths), batch_size):
        chunk = list(zip(names[start : start + batch_size], paths[start : start + batch_size], strict=True))
        tensors, ok_rows = [], []
        for name, path in chunk:
            row = {"file": name, "label": "", **{f"p_{label}": None for label in id2label.values()},
                   "p_spread": None, "in_distribution": None, "ood_score": None, "error": "", **settings}
            rows.append(row)
            try:
                tensors.append(pixel_values(processor, load_image(path)))
                ok_rows.append(row)
            except ImageLoadError as error:
                row["error"] = str(error)
        if tensors:
            out = run_model(model, torch.cat(tensors), tta, backend)
            for i, row in enumerate(ok_rows):
                result = make_prediction(model, out.probs[i], threshold,
                                         None if out.view_probs is None else out.view_probs[i],
                                         None if out.ood_scores is None else out.ood_scores[i])
                row.update({f"p_{k}": round(v, 6) for k, v in result.probabilities.items()})
                row.update(label=result.label, in_distribution=result.in_distribution,
                           p_spread=None if result.spread is None else round(result.spread, 6),
                           ood_score=None if result.ood_score is None else round(result.ood_score, 4))
        if progress is not None:
            progress(len(chunk))
    return rows


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0]) if rows else ["file", "label", "error"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


__all__ = [
    "CSV_SETTINGS",
    "MODEL_LOCK",
    "OOD_WARNING",
    "BatchOutput",
    "ImageLoadError",
    "LogitsOnly",
    "ModelInfo",
    "Prediction",
    "load_classifier",
    "local_model_dir",
    "load_image",
    "make_prediction",
    "model_name",
    "pixel_values",
    "predict",
    "predict_batch",
    "probabilities",
    "run_model",
    "tta_views",
    "write_csv",
]
