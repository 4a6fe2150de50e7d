"""Inference for the demo and the batch CLI: image loading with clear errors, prediction (optionally with test-time
augmentation), Grad-CAM and fusion-weight views. No Gradio here: `app.py` only wires these functions to components."""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import ExifTags, Image, UnidentifiedImageError
from pytorch_grad_cam import (
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from transformers import AutoImageProcessor, AutoModelForImageClassification

from . import AsffResNetConfig  # noqa: F401  (importing the package registers the Auto classes)
from .image_utils import to_rgb
from .model_card import read_model_card

MIN_IMAGE_SIDE = 16
MIN_OVERLAY_SIDE = 224
DEFAULT_THRESHOLD = 0.5
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
CAM_TARGETS = {"fused": "fused features (after ASFF)", "stage4": "stage4 (7x7)", "stage3": "stage3 (14x14)"}
# Gradient- or activation-based methods: one forward (+ one backward). ScoreCAM / AblationCAM run one forward per
# channel (1024 here), far too slow for an interactive CPU demo, so they are left out.
CAM_METHODS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "gradcam-elementwise": GradCAMElementWise,
}
# Grad-CAM hooks a module of the shared model, so a concurrent forward would leak into its activations; and on
# CPU two forwards at once are no faster than one after the other. One lock serialises every forward.
_MODEL_LOCK = threading.Lock()
ImageSource = str | Path | bytes | Image.Image


class ImageLoadError(ValueError):
    """An input that is not a usable image; the message is meant for the user."""


@dataclass
class ModelInfo:
    source: str
    model_type: str
    fusion_mode: str | None  # None: not an ASFF-ResNet (e.g. a torchvision baseline)
    id2label: dict[int, str]
    decision_threshold: float
    image_size: int | None
    num_parameters: int
    card_text: str | None = None
    card_data: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExplainResult:
    probabilities: dict[str, float]
    label: str
    threshold: float
    cam: np.ndarray  # (H, W) float in [0, 1], at the model's input size
    cam_overlay: np.ndarray  # (H', W', 3) uint8, the crop upsampled to at least MIN_OVERLAY_SIDE
    image: np.ndarray  # (H, W, 3) uint8: the crop the model saw
    fusion_mode: str | None
    fusion_weights: np.ndarray | None
    fusion_figure: Figure | None
    fusion_message: str
    target: str
    method: str
    timing_ms: dict[str, float]


# --------------------------------------------------------------------------- loading


def load_classifier(model_id_or_dir: str | Path) -> tuple[nn.Module, Any, ModelInfo]:
    """Loads a saved classifier (directory or Hub id) and its image processor, in eval mode and float32.

    Parameters are frozen (`requires_grad=False`): Grad-CAM then needs gradients only from the target layer up.
    The decision threshold comes from the model card's `decision_threshold` when there is one (else 0.5); it is
    also set as `model.decision_threshold`, the default of `explain` and `predict_batch`.
    """
    source = str(model_id_or_dir)
    model = AutoModelForImageClassification.from_pretrained(source, trust_remote_code=True, dtype=torch.float32)
    model = model.float().eval().requires_grad_(False)
    processor = AutoImageProcessor.from_pretrained(source)
    card_text, card_data = read_model_card(source)
    threshold = float(card_data.get("decision_threshold", DEFAULT_THRESHOLD))
    model.decision_threshold = threshold
    config = model.config
    info = ModelInfo(
        source=source,
        model_type=config.model_type,
        fusion_mode=getattr(config, "fusion_mode", None) if hasattr(model, "asff_resnet") else None,
        id2label={int(k): v for k, v in config.id2label.items()},
        decision_threshold=threshold,
        image_size=getattr(config, "image_size", None),
        num_parameters=sum(p.numel() for p in model.parameters()),
        card_text=card_text,
        card_data=card_data,
    )
    return model, processor, info


def load_image(source: ImageSource, notes: list[str] | None = None) -> Image.Image:
    """Opens a file path, raw bytes or PIL image as an RGB PIL image (EXIF rotation applied).

    Raises `ImageLoadError` (a `ValueError`) with a message for the user on empty, non-image, truncated, tiny or
    oversized (decompression-bomb) input. Converts as training does (`image_utils.to_rgb`: alpha composited on white,
    high bit depth scaled to 8 bits, ...); each such conversion is described in `notes` when a list is given.
    """
    notes = notes if notes is not None else []
    name = Path(source).name if isinstance(source, str | Path) else "image"
    try:
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, bytes | bytearray):
            if not source:
                raise ImageLoadError("The file is empty (0 bytes).")
            image = Image.open(io.BytesIO(source))
        else:
            path = Path(source)
            if not path.is_file():
                raise ImageLoadError(f"{name}: file not found.")
            if path.stat().st_size == 0:
                raise ImageLoadError(f"{name}: the file is empty (0 bytes).")
            image = Image.open(path)
        _check_size(image, name)
        image.load()
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"{name}: the image is too large; it could be a decompression bomb ({error})") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image file, or a format that cannot be read.") from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise ImageLoadError(f"{name}: the image file is truncated or corrupt ({error}).") from None
    return _to_rgb(image, name, notes)


def _check_size(image: Image.Image, name: str) -> None:
    width, height = image.size
    # PIL raises a DecompressionBombError only beyond twice its limit and merely warns in between: refuse both.
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        raise ImageLoadError(
            f"{name}: the image is too large ({width}x{height} = {width * height} pixels, the limit is "
            f"{Image.MAX_IMAGE_PIXELS}); it could be a decompression bomb."
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageLoadError(f"{name}: the image is too small ({width}x{height} px; at least {MIN_IMAGE_SIDE} px).")


def _to_rgb(image: Image.Image, name: str, notes: list[str]) -> Image.Image:
    """The conversion training uses (`image_utils.to_rgb`), plus a note for the user on what it changed."""
    mode = image.mode
    try:
        rotated = image.getexif().get(ExifTags.Base.Orientation, 1) != 1
        rgb = to_rgb(image)
    except (ValueError, OSError, SyntaxError) as error:  # unsupported mode, malformed EXIF
        raise ImageLoadError(f"{name}: cannot convert this {mode} image to RGB ({error}).") from None
    if rotated:
        notes.append("The photo was rotated according to its EXIF orientation tag.")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        notes.append("The image's transparency (alpha channel) was composited on a white background.")
    elif mode.startswith("I") or mode == "F":
        notes.append(f"The {mode} (high bit depth) image was scaled to 8-bit greyscale.")
    elif mode in ("L", "1"):
        notes.append("The greyscale image was converted to RGB.")
    elif mode not in ("RGB", "P"):
        notes.append(f"The {mode} image was converted to RGB.")
    return rgb


# --------------------------------------------------------------------------- prediction


class LogitsOnly(nn.Module):
    """pytorch-grad-cam expects a model returning a tensor; keeps the last full output (for the fusion weights)."""

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
    """The dihedral group of a square crop (4 rotations x optional flip, 8 views); flips and a half turn otherwise.
    Lesions have no canonical orientation, so every view is as valid as the original."""
    if pixel_values.shape[-1] == pixel_values.shape[-2]:
        rotations = [torch.rot90(pixel_values, k, dims=(-2, -1)) for k in range(4)]
        return torch.cat(rotations + [r.flip(-1) for r in rotations])
    flips = [pixel_values, pixel_values.flip(-1), pixel_values.flip(-2), pixel_values.flip(-1).flip(-2)]
    return torch.cat(flips)


def probabilities(model: nn.Module, pixel_values: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """(B, num_labels) softmax probabilities; with `tta`, averaged over the views of `tta_views`."""
    batch = pixel_values.shape[0]
    inputs = torch.cat([tta_views(x[None]) for x in pixel_values]) if tta else pixel_values
    with _MODEL_LOCK, torch.no_grad():
        logits = LogitsOnly(model)(inputs.to(_device(model)))
    probs = logits.float().cpu().softmax(-1)
    return probs.view(batch, -1, probs.shape[-1]).mean(1)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def decide(probs: torch.Tensor | np.ndarray | Sequence[float], threshold: float = DEFAULT_THRESHOLD) -> int:
    """Class index: binary models predict class 1 (malignant) when p(class 1) >= threshold; others take the argmax."""
    probs = np.asarray(probs, dtype=np.float64)
    return int(probs[1] >= threshold) if probs.shape[-1] == 2 else int(probs.argmax())


def default_threshold(model: nn.Module) -> float:
    return float(getattr(model, "decision_threshold", DEFAULT_THRESHOLD))


def _as_dict(model: nn.Module, probs: torch.Tensor) -> dict[str, float]:
    id2label = model.config.id2label
    return {str(id2label[i]): float(p) for i, p in enumerate(probs.tolist())}


def predict(model: nn.Module, processor, image: ImageSource, tta: bool = False) -> dict[str, float]:
    """Class probabilities {label: p} for one image (any input `load_image` accepts)."""
    return _as_dict(model, probabilities(model, pixel_values(processor, load_image(image)), tta)[0])


def predict_batch(
    model: nn.Module,
    processor,
    paths: Sequence[str | Path],
    threshold: float | None = None,
    tta: bool = False,
    batch_size: int = 16,
    names: Sequence[str] | None = None,
    progress: Callable[[int], Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per file: `file`, `p_<label>` per class, `label` and `error` (empty when fine). A file that cannot
    be read gets its error and empty probabilities; the others are still processed. `progress(n)` is called after
    every chunk of n files."""
    threshold = default_threshold(model) if threshold is None else threshold
    id2label = model.config.id2label
    names = list(names) if names is not None else [Path(p).name for p in paths]
    rows = []
    for start in range(0, len(paths), batch_size):
        chunk = list(zip(names[start : start + batch_size], paths[start : start + batch_size], strict=True))
        tensors, ok_rows = [], []
        for name, path in chunk:
            row = {"file": name, **{f"p_{label}": None for label in id2label.values()}, "label": "", "error": ""}
            rows.append(row)
            try:
                tensors.append(pixel_values(processor, load_image(path)))
                ok_rows.append(row)
            except ImageLoadError as error:
                row["error"] = str(error)
        if tensors:
            for row, probs in zip(ok_rows, probabilities(model, torch.cat(tensors), tta), strict=True):
                row.update({f"p_{k}": round(v, 6) for k, v in _as_dict(model, probs).items()})
                row["label"] = id2label[decide(probs, threshold)]
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


# --------------------------------------------------------------------------- Grad-CAM and fusion views


def cam_target_layer(model: nn.Module, target: str = "fused") -> tuple[nn.Module, str]:
    """The module Grad-CAM hooks: the fused map, stage4 or stage3 of an ASFF-ResNet; for other models (baselines)
    their last convolution, whatever the target."""
    if target not in CAM_TARGETS:
        raise ValueError(f"unknown CAM target {target!r}; choose one of {', '.join(CAM_TARGETS)}")
    asff = getattr(model, "asff_resnet", None)
    if asff is not None:
        # The two fused stages (any backbone); remote code saved before stage_modules() existed has a ResNet.
        low, high = asff.stage_modules() if hasattr(asff, "stage_modules") else asff.backbone.encoder.stages[-2:]
        return {"fused": asff.fusion_output, "stage4": high, "stage3": low}[target], target
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no convolution for Grad-CAM to hook")
    return convs[-1][1], convs[-1][0]


def _denormalise(processor, pixel_values: torch.Tensor) -> np.ndarray:
    """The model's view of the image as float RGB in [0, 1], (H, W, 3)."""
    x = pixel_values[0].permute(1, 2, 0).numpy().astype(np.float32)
    if getattr(processor, "do_normalize", False):
        x = x * np.asarray(processor.image_std, np.float32) + np.asarray(processor.image_mean, np.float32)
    return np.clip(x, 0.0, 1.0)


class _DecisionTarget:
    """Grad-CAM target: the logit of the class the thresholded decision picks, read from the same forward pass."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[decide(logits.detach().float().softmax(-1), self.threshold)]


def grad_cam(
    model: nn.Module, pixel_values: torch.Tensor, target: str = "fused", method: str = "gradcam", targets=None
) -> tuple[np.ndarray, Any]:
    """(H, W) CAM in [0, 1] for the first image, and the model's full output of that forward pass."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    layer, _ = cam_target_layer(model, target)
    wrapper = LogitsOnly(model)

    def _leaf(module, args, output):
        # Cut the graph at the target: with frozen parameters, only the layers above it are back-propagated.
        return output.detach().requires_grad_(True) if torch.is_grad_enabled() else output

    with _MODEL_LOCK:
        handle = layer.register_forward_hook(_leaf)
        try:
            with CAM_METHODS[method](model=wrapper, target_layers=[layer]) as cam:
                mask = cam(input_tensor=pixel_values, targets=targets)
        finally:
            handle.remove()
    return mask[0], wrapper.last_output


def cam_overlay(rgb: np.ndarray, mask: np.ndarray, min_side: int = MIN_OVERLAY_SIDE) -> np.ndarray:
    """`show_cam_on_image` of the CAM over the model's crop (float RGB in [0, 1]), upsampled (bilinear) to at least
    `min_side` pixels so that small-input models stay legible."""
    height, width = mask.shape
    scale = max(1.0, min_side / min(height, width))
    if scale > 1:
        size = (round(width * scale), round(height * scale))
        rgb = np.asarray(Image.fromarray((rgb * 255).round().astype(np.uint8)).resize(size, Image.BILINEAR)) / 255.0
        mask = np.asarray(Image.fromarray(mask.astype(np.float32), mode="F").resize(size, Image.BILINEAR))
    return show_cam_on_image(rgb.astype(np.float32), np.clip(mask, 0, 1), use_rgb=True)


def explain(
    model: nn.Module,
    processor,
    image: ImageSource,
    target: str = "fused",
    method: str = "gradcam",
    threshold: float | None = None,
    tta: bool = False,
) -> ExplainResult:
    """Probabilities, thresholded label, CAM overlay and fusion-weight view for one image. Without TTA one forward
    pass serves both the probabilities and the CAM; with TTA the probabilities are averaged over 8 views first."""
    threshold = default_threshold(model) if threshold is None else float(threshold)
    start = time.perf_counter()
    inputs = pixel_values(processor, load_image(image))
    timing = {"preprocess": time.perf_counter() - start}
    probs = None
    if tta:
        probs = probabilities(model, inputs, tta=True)[0]
        timing["tta"] = time.perf_counter() - start - sum(timing.values())
        targets = [ClassifierOutputTarget(decide(probs, threshold))]
    else:
        targets = [_DecisionTarget(threshold)]
    mask, output = grad_cam(model, inputs, target, method, targets)
    timing["cam"] = time.perf_counter() - start - sum(timing.values())
    if probs is None:
        probs = output.logits[0].detach().float().cpu().softmax(-1)
    rgb = _denormalise(processor, inputs)
    overlay = cam_overlay(rgb, mask)
    weights = getattr(output, "fusion_weights", None)
    weights = None if weights is None else weights[0].detach().float().cpu().numpy()
    fusion_mode = getattr(model.config, "fusion_mode", None) if hasattr(model, "asff_resnet") else None
    figure = fusion_figure(weights, rgb)
    timing["figure"] = time.perf_counter() - start - sum(timing.values())
    timing = {k: round(v * 1000, 1) for k, v in timing.items()}
    timing["total"] = round(sum(timing.values()), 1)
    return ExplainResult(
        probabilities=_as_dict(model, probs),
        label=str(model.config.id2label[decide(probs, threshold)]),
        threshold=threshold,
        cam=mask,
        cam_overlay=overlay,
        image=(rgb * 255).round().astype(np.uint8),
        fusion_mode=fusion_mode,
        fusion_weights=weights,
        fusion_figure=figure,
        fusion_message=fusion_message(fusion_mode, weights),
        target=target,
        method=method,
        timing_ms=timing,
    )


def fusion_message(fusion_mode: str | None, weights: np.ndarray | None) -> str:
    if fusion_mode is None:
        return "This model is not an ASFF-ResNet: it has no fusion weights."
    if fusion_mode == "none" or weights is None:
        return "Plain ResNet (fusion_mode='none'): stage4 features only, no fusion weights to show."
    share = float(weights.mean()) if fusion_mode == "channel" else float(weights[0].mean())
    where = "over channels" if fusion_mode == "channel" else "over the image"
    message = f"{fusion_mode.capitalize()} fusion: stage3 gets {share:.1%} of the weight on average {where}, " \
        f"stage4 {1 - share:.1%}."
    if fusion_mode == "channel":  # the paper's softmax runs over channels, so the weights sum to 1: mean = 1/C
        message += f" (The softmax runs over the {weights.size} channels, so this mean is always 1/{weights.size}; " \
            "the per-channel curve shows where stage3 is used.)"
    return message


def fusion_figure(weights: np.ndarray | torch.Tensor | None, image: np.ndarray | None = None) -> Figure | None:
    """Channel weights (C,): the per-channel stage3 weight w and stage4 weight 1 - w, sorted, and their mean shares.
    Spatial weights (2, H, W): the stage3 weight map (alpha) upsampled over `image` (float or uint8 RGB).
    None (plain ResNet): None. Built with the object API (no pyplot), so it is safe in server threads."""
    if weights is None:
        return None
    weights = torch.as_tensor(np.asarray(weights, dtype=np.float32))
    if weights.dim() == 1:
        return _channel_figure(weights.numpy())
    if weights.dim() == 3 and weights.shape[0] == 2:
        return _spatial_figure(weights[0], image)
    raise ValueError(f"fusion weights must be (C,) or (2, H, W), got {tuple(weights.shape)}")


def _channel_figure(w: np.ndarray) -> Figure:
    order = np.argsort(w)[::-1]
    figure = Figure(figsize=(8, 3.2), layout="constrained")
    curves, bars = figure.subplots(1, 2, width_ratios=[3, 1])
    rank = np.arange(1, len(w) + 1)
    curves.plot(rank, w[order], label="stage3 weight w", color="tab:blue")
    curves.plot(rank, 1 - w[order], label="stage4 weight 1 - w", color="tab:orange")
    curves.set_yscale("log")
    curves.set_xlabel("channel (sorted by w)")
    curves.set_ylabel("weight")
    curves.set_title("Per-channel fusion weights")
    curves.legend(loc="center right")
    share = float(w.mean())
    bars.bar(["stage3", "stage4"], [share, 1 - share], color=["tab:blue", "tab:orange"])
    for x, value in enumerate([share, 1 - share]):
        bars.text(x, value, f"{value:.1%}", ha="center", va="bottom")
    bars.set_ylim(0, 1.1)
    bars.set_title("Mean share")
    return figure


def _spatial_figure(alpha: torch.Tensor, image: np.ndarray | None) -> Figure:
    size = image.shape[:2] if image is not None else (alpha.shape[0] * 16, alpha.shape[1] * 16)
    upsampled = torch.nn.functional.interpolate(alpha[None, None], size=size, mode="bilinear", align_corners=False)
    upsampled = upsampled[0, 0].numpy()
    figure = Figure(figsize=(4.5, 3.6), layout="constrained")
    ax = figure.subplots()
    if image is not None:
        ax.imshow(image)
    shown = ax.imshow(upsampled, cmap="viridis", vmin=0, vmax=1, alpha=0.55 if image is not None else 1.0)
    figure.colorbar(shown, ax=ax, label="stage3 weight alpha (stage4: 1 - alpha)")
    ax.set_title(f"Spatial fusion: mean alpha {float(alpha.mean()):.2f}")
    ax.set_axis_off()
    return figure


def find_images(folder: str | Path) -> list[Path]:
    """Image files under `folder`, recursively, sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


__all__ = [
    "CAM_METHODS",
    "CAM_TARGETS",
    "ExplainResult",
    "ImageLoadError",
    "ModelInfo",
    "cam_overlay",
    "cam_target_layer",
    "decide",
    "explain",
    "find_images",
    "fusion_figure",
    "fusion_message",
    "grad_cam",
    "load_classifier",
    "load_image",
    "predict",
    "predict_batch",
    "probabilities",
    "tta_views",
    "write_csv",
]
