"""Grad-CAM for ASFF-ResNet (and the baselines): which regions raised the score of the class it explains, at the
fused map, stage4 or stage3. Prediction lives in `modeling.inference`, figures in `modeling.plots`; `app.py` only
wires these to components."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from matplotlib.figure import Figure
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
from pytorch_grad_cam.utils.find_layers import find_layer_types_recursive
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from .decision import calibrated_probabilities, decide, decision_threshold, temperature
from .image_utils import ImageSource, load_image
from .inference import MODEL_LOCK, LogitsOnly, Prediction, make_prediction, pixel_values, run_model
from .onnx_runtime import OnnxClassifier
from .plots import cam_overlay, fusion_figure, fusion_message
from .presentation import (
    CAM_EMPTY_AGAINST,
    CAM_HOW_TO_READ,
    CAM_HOW_TO_READ_AGAINST,
    CAM_HOW_TO_READ_CLASS_AGNOSTIC,
    CAM_METHOD_NAMES,
    CAM_TARGETS,
    CLASS_AGNOSTIC_METHODS,
)

# The CAM targets, method names and captions are shared with the torch-free app (`modeling.presentation`).
# Targets whose gradients reach the backbone only through its stage maps: an onnxruntime graph can run the backbone.
STAGE_MAP_TARGETS = ("fused", "stage4")
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


@dataclass
class ExplainResult:
    prediction: Prediction
    cam: np.ndarray  # (H, W) float in [0, 1], at the model's input size
    cam_label: str  # the class the CAM explains
    cam_overlay: np.ndarray  # (H', W', 3) uint8, the crop upsampled to at least MIN_OVERLAY_SIDE
    image: np.ndarray  # (H, W, 3) uint8: the crop the model saw
    fusion_mode: str | None
    fusion_weights: np.ndarray | None
    fusion_figure: Figure | None
    fusion_message: str
    target: str
    method: str
    timing_ms: dict[str, float]
    target_name: str = ""  # the target with its grid for this model and input: "stage3 (18x18)"
    cam_against: str | None = None  # with contrast: the class(es) the CAM explains `cam_label` against

    @property
    def cam_is_empty(self) -> bool:
        """No pixel raised the explained score: Grad-CAM's ReLU left nothing (the map shows no heat)."""
        return not np.any(self.cam > 0)

    @property
    def label(self) -> str:
        return self.prediction.label

    @property
    def probabilities(self) -> dict[str, float]:
        return self.prediction.probabilities


def cam_target_name(model: nn.Module, target: str, input_size: int) -> str:
    """A CAM target as the UI names it, with its grid at this input size for an ASFF model whose backbone reports
    its strides (stage3 (18x18) at 288 px); the fused map lies on the finer stage's grid."""
    name = CAM_TARGETS.get(target, target)
    reductions = getattr(getattr(model, "asff_resnet", None), "stage_reductions", None)
    if not reductions or target not in CAM_TARGETS:
        return name
    side = math.ceil(input_size / (reductions[1] if target == "stage4" else reductions[0]))
    return f"{name}, {side}x{side}" if target == "fused" else f"{target} ({side}x{side})"


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
    convs = find_layer_types_recursive(model, [nn.Conv2d])
    if not convs:
        raise ValueError(f"{type(model).__name__} has no convolution for Grad-CAM to hook")
    return convs[-1], "last convolution"


def _denormalise(processor, pixel_values: torch.Tensor) -> np.ndarray:
    """The model's view of the image as float RGB in [0, 1], (H, W, 3)."""
    x = pixel_values[0].permute(1, 2, 0).numpy().astype(np.float32)
    if getattr(processor, "do_normalize", False):
        x = x * np.asarray(processor.image_std, np.float32) + np.asarray(processor.image_mean, np.float32)
    return np.clip(x, 0.0, 1.0)


class ClassMarginTarget:
    """Grad-CAM target: the logit of `category` minus the largest other logit, the margin a decision between the
    classes rests on (for two classes, p = sigmoid(margin / T)). A plain logit target (`ClassifierOutputTarget`) shows
    what raised that one logit; with one head over shared features both classes' logits rise on much the same
    regions (the default model's benign and malignant maps correlate at a median 0.99 over 200 validation images,
    `recipes/cam_class_overlap.py`), so it hardly tells the classes apart. The margin shows what favoured this class
    over the other. (grad-cam's `ClassifierOutputSoftmaxTarget` has the same direction for two classes, scaled by
    p(1 - p), which vanishes on a confident prediction.)"""

    def __init__(self, category: int):
        self.category = int(category)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        others = torch.cat([logits[..., :self.category], logits[..., self.category + 1:]], dim=-1)
        return logits[..., self.category] - others.max(dim=-1).values


def class_target(category: int, contrast: bool = False):
    """The Grad-CAM target for one class: its logit, or (`contrast`) its margin over the other classes."""
    return ClassMarginTarget(category) if contrast else ClassifierOutputTarget(int(category))


class _DecisionTarget:
    """Grad-CAM target: the logit (or, with `contrast`, the margin) of the class the thresholded decision picks
    (calibrated probabilities), read from the same forward pass."""

    def __init__(self, threshold: float, temperature: float, contrast: bool = False):
        self.threshold, self.temperature, self.contrast = threshold, temperature, contrast

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        category = decide(calibrated_probabilities(logits.detach(), self.temperature), self.threshold)
        return class_target(category, self.contrast)(logits)


class _StageReplay(nn.Module):
    """The classifier above its backbone, fed with the stage maps an onnxruntime graph computed for the image
    (`forward_from_stages`). Every CAM target sits at or above those maps (the stages or the fused map), and the
    methods here need only the target's activations and gradients, so the CAM is the whole torch model's while torch
    runs only the small part above the backbone. `low` / `high` are hook points for the stage targets."""

    def __init__(self, model: nn.Module, low: torch.Tensor, high: torch.Tensor):
        super().__init__()
        # Not a submodule: Grad-CAM calls .eval() on what it is given, and walking the idle backbone's ~300 modules
        # costs more than the layers above it run (the model is already in eval mode: `load_classifier`).
        self.__dict__["model"] = model
        self.maps = (low, high)
        self.low, self.high = nn.Identity(), nn.Identity()
        self.last_output = None

    def parameters(self, recurse: bool = True):  # Grad-CAM reads the device from the first one
        return self.model.parameters(recurse)

    def zero_grad(self, set_to_none: bool = True) -> None:
        # Grad-CAM clears gradients before its backward pass. Only the layers above the stage maps can hold any (the
        # backbone ran in onnxruntime), and walking the whole model's parameters took ~2.5 ms, more than they run.
        base = self.model.asff_resnet
        for module in (*base.children(), *self.model.children()):
            if module is not base and module is not base.backbone:
                module.zero_grad(set_to_none)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # the pixels already went through the graph
        low, high = self.maps
        self.last_output = self.model.forward_from_stages(self.low(low), self.high(high))
        return self.last_output.logits


def _check_cam_backend(model: nn.Module, backend: OnnxClassifier) -> None:
    if not backend.serves_grad_cam or not hasattr(model, "forward_from_stages"):
        raise ValueError(f"Grad-CAM cannot run on {backend!r}: it needs a float32 graph with the stage maps "
                         "(`OnnxClassifier.serves_grad_cam`, export it again) and an ASFF model")


def grad_cam(
    model: nn.Module, pixel_values: torch.Tensor, target: str = "fused", method: str = "gradcam", targets=None,
    backend: OnnxClassifier | None = None,
) -> tuple[np.ndarray, Any]:
    """(H, W) CAM in [0, 1] for the first image, and the model's full output of that forward pass. With `backend`
    (a graph that `serves_grad_cam`), onnxruntime runs the backbone and torch only the layers above it, for the targets
    whose gradients all pass through the stage maps (`STAGE_MAP_TARGETS`); stage3's also flow through the backbone's
    last stage, so it runs on the whole torch model."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    if backend is None or target not in STAGE_MAP_TARGETS:
        layer, _ = cam_target_layer(model, target)
        wrapper = LogitsOnly(model)
    else:
        _check_cam_backend(model, backend)
        cam_target_layer(model, target)  # the same error for an unknown target
        with MODEL_LOCK:
            maps = backend(pixel_values, stages=True)
        wrapper = _StageReplay(model, maps.stage_low, maps.stage_high)
        layer = {"fused": model.asff_resnet.fusion_output, "stage4": wrapper.high, "stage3": wrapper.low}[target]

    def _leaf(module, args, output):
        # Cut the graph at the target: with frozen parameters, only the layers above it are back-propagated.
        return output.detach().requires_grad_(True) if torch.is_grad_enabled() else output

    with MODEL_LOCK:
        handle = layer.register_forward_hook(_leaf)
        try:
            with CAM_METHODS[method](model=wrapper, target_layers=[layer]) as cam:
                mask = cam(input_tensor=pixel_values, targets=targets)
        finally:
            handle.remove()
    return mask[0], wrapper.last_output


class _UnscaledGradCAM(GradCAM):
    """pytorch-grad-cam's GradCAM without its per-image min-max scaling (`scale_cam_image`): the ReLU'd
    sum of gradient-weighted activations, bilinearly upsampled to the input size (as `scale_cam_image` resizes). The
    min-max step subtracts each map's minimum, which moves mass between regions: shares of mass need the raw map."""

    def compute_cam_per_layer(self, input_tensor, targets, eigen_smooth):
        width, height = self.get_target_width_height(input_tensor)
        activations = [a.cpu().numpy() for a in self.activations_and_grads.activations]
        gradients = [g.cpu().numpy() for g in self.activations_and_grads.gradients]
        maps = []
        for layer, layer_activations, layer_gradients in zip(self.target_layers, activations, gradients, strict=True):
            cam = np.maximum(self.get_cam_image(input_tensor, layer, targets, layer_activations, layer_gradients,
                                                eigen_smooth), 0)
            maps.append(np.stack([cv2.resize(np.float32(c), (width, height)) for c in cam])[:, None])
        return maps

    def aggregate_multi_layers(self, cam_per_target_layer):
        return np.maximum(np.concatenate(cam_per_target_layer, axis=1), 0).mean(axis=1)


def raw_grad_cams(model: nn.Module, pixel_values: torch.Tensor, class_ids, target: str = "fused",
                  contrast: bool = False) -> tuple[np.ndarray, torch.Tensor]:
    """Unscaled Grad-CAMs of a batch (B, H, W), each for its class in `class_ids` (with `contrast`, that class against
    the others: `ClassMarginTarget`), at the input size, and the logits
    of that forward pass (B, C). Non-negative, not min-max normalised: proportional to the gradient scale, so only
    ratios within a map (e.g. `cam_frame_share`) are comparable. The model's parameters are frozen for the pass
    (gradients stop at the target layer) and their `requires_grad` flags restored after."""
    layer, _ = cam_target_layer(model, target)
    wrapper = LogitsOnly(model)
    flags = [p.requires_grad for p in model.parameters()]

    def _leaf(module, args, output):  # as in grad_cam: back-propagate only the layers above the target
        return output.detach().requires_grad_(True) if torch.is_grad_enabled() else output

    with MODEL_LOCK:
        training = model.training
        model.requires_grad_(False)
        handle = layer.register_forward_hook(_leaf)
        try:
            with torch.enable_grad(), _UnscaledGradCAM(model=wrapper, target_layers=[layer]) as cam:
                maps = cam(input_tensor=pixel_values, targets=[class_target(k, contrast) for k in class_ids])
        finally:
            handle.remove()
            for parameter, flag in zip(model.parameters(), flags, strict=True):
                parameter.requires_grad_(flag)
            model.train(training)
    logits = getattr(wrapper.last_output, "logits", wrapper.last_output)
    return maps, logits.detach().float().cpu()


def cam_frame_share(cam: np.ndarray, frame: float = 1 / 8) -> float:
    """Share of a non-negative CAM's mass in the outer `frame` of each side (1/8: 43.75 % of the area; a uniform map
    gives that share); NaN for an all-zero map. Give it a raw map (`raw_grad_cams`): min-max scaling moves mass."""
    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2 or (cam < 0).any():
        raise ValueError(f"a CAM must be a non-negative (H, W) map, got shape {cam.shape}, minimum {cam.min():.3g}")
    height, width = cam.shape
    top, side = round(height * frame), round(width * frame)
    total = cam.sum()
    return float((total - cam[top:height - top, side:width - side].sum()) / total) if total > 0 else float("nan")


def explain(
    model: nn.Module,
    processor,
    image: ImageSource,
    target: str = "fused",
    method: str = "gradcam",
    threshold: float | None = None,
    tta: bool = False,
    cam_class: int | None = None,
    backend: OnnxClassifier | None = None,
    contrast: bool = False,
) -> ExplainResult:
    """Prediction (calibrated probabilities, decision, OOD flag), a CAM and the fusion-weight view for one image. The
    CAM explains `cam_class` when given, else the decided class; with `contrast`, that class against the other(s)
    (`ClassMarginTarget`: what favoured it over them, rather than what raised its logit). A class-agnostic method
    (EigenCAM) ignores the class and the contrast. Without TTA one forward pass serves both the
    prediction and the CAM; with TTA the probabilities are averaged over 8 views first. With `backend` (a float32
    graph that `serves_grad_cam`), onnxruntime runs the backbone for both, torch the layers above it."""
    threshold = decision_threshold(model.config) if threshold is None else float(threshold)
    if backend is not None:
        _check_cam_backend(model, backend)
    start = time.perf_counter()
    inputs = pixel_values(processor, load_image(image))
    timing = {"preprocess": time.perf_counter() - start}
    prediction = None
    if tta:
        out = run_model(model, inputs, tta=True, backend=backend)
        prediction = make_prediction(model, out.probs[0], threshold, out.view_probs[0],
                                     None if out.ood_scores is None else out.ood_scores[0])
        timing["tta"] = time.perf_counter() - start - sum(timing.values())
        cam_class = decide(out.probs[0], threshold) if cam_class is None else cam_class
    targets = ([class_target(cam_class, contrast)] if cam_class is not None
               else [_DecisionTarget(threshold, temperature(model.config), contrast)])
    mask, output = grad_cam(model, inputs, target, method, targets, backend)
    timing["cam"] = time.perf_counter() - start - sum(timing.values())
    if prediction is None:
        probs = calibrated_probabilities(output.logits[0].detach().cpu(), temperature(model.config))
        score = getattr(output, "ood_score", None)
        prediction = make_prediction(model, probs, threshold, ood_score=None if score is None else score[0].detach())
        cam_class = decide(probs, threshold) if cam_class is None else cam_class
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
        prediction=prediction,
        cam=mask,
        cam_label=str(model.config.id2label[cam_class]),
        cam_overlay=overlay,
        image=(rgb * 255).round().astype(np.uint8),
        fusion_mode=fusion_mode,
        fusion_weights=weights,
        fusion_figure=figure,
        fusion_message=fusion_message(fusion_mode, weights),
        target=target,
        method=method,
        timing_ms=timing,
        target_name=cam_target_name(model, target, inputs.shape[-1]),
        cam_against=_against(model.config.id2label, cam_class) if contrast and method not in CLASS_AGNOSTIC_METHODS
        else None,
    )


def _against(id2label: dict, category: int) -> str:
    others = [str(label) for index, label in sorted(id2label.items()) if int(index) != int(category)]
    return others[0] if len(others) == 1 else "the other classes"


__all__ = [
    "CAM_HOW_TO_READ",
    "CAM_HOW_TO_READ_CLASS_AGNOSTIC",
    "CAM_HOW_TO_READ_AGAINST",
    "CAM_EMPTY_AGAINST",
    "CLASS_AGNOSTIC_METHODS",
    "CAM_METHODS",
    "CAM_METHOD_NAMES",
    "CAM_TARGETS",
    "ClassMarginTarget",
    "class_target",
    "cam_target_name",
    "ExplainResult",
    "cam_frame_share",
    "cam_target_layer",
    "explain",
    "grad_cam",
    "raw_grad_cams",
]
