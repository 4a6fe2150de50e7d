"""Figures for people: the fusion-weight views and the Grad-CAM overlay with its colour scale. Built with
matplotlib's object API (no pyplot), so they are safe in server threads; sized to stay readable at phone width."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from pytorch_grad_cam.utils.image import scale_cam_image, show_cam_on_image

MIN_OVERLAY_SIDE = 224
COLORBAR_HEIGHT = 14


def fusion_message(fusion_mode: str | None, weights: np.ndarray | None) -> str:
    """One or two sentences on how to read this image's fusion weights."""
    if fusion_mode is None:
        return "This model is not an ASFF-ResNet: it has no fusion weights."
    if fusion_mode == "none" or weights is None:
        return "Plain ResNet (fusion_mode='none'): stage4 features only, no fusion weights to show."
    if fusion_mode == "channel":
        # The paper's softmax runs over channels (the weights sum to 1), so a mean share says nothing: what matters
        # is where the weight goes.
        top = int(np.argmax(weights))
        return (f"Channel fusion: each of the {weights.size} channels mixes stage3 (weight w) and stage4 (1 - w); the "
                f"w sum to 1 over channels. Channel {top} takes the most, w = {float(weights[top]):.3f}; "
                f"{int((weights > 0.5).sum())} channel(s) are mostly stage3, the rest mostly stage4.")
    alpha = weights[0]
    return (f"Spatial fusion: at every position the map mixes stage3 (weight alpha) and stage4 (1 - alpha); here alpha "
            f"averages {float(alpha.mean()):.2f} (range {float(alpha.min()):.2f}-{float(alpha.max()):.2f}). Bright = "
            "the finer stage3 features dominate there.")


def fusion_figure(weights: np.ndarray | torch.Tensor | None, image: np.ndarray | None = None) -> Figure | None:
    """Channel weights (C,): the per-channel stage3 weight w and stage4 weight 1 - w, sorted. Spatial weights
    (2, H, W): the stage3 weight map (alpha) upsampled over `image` (float or uint8 RGB). None (plain ResNet): None."""
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
    figure = Figure(figsize=(5, 3.6), layout="constrained")
    ax = figure.subplots()
    rank = np.arange(1, len(w) + 1)
    ax.plot(rank, w[order], label="stage3 weight w", color="tab:blue")
    ax.plot(rank, 1 - w[order], label="stage4 weight 1 - w", color="tab:orange")
    ax.set_yscale("log")
    ax.set_xlabel("channel, sorted by w")
    ax.set_ylabel("weight (log scale)")
    ax.set_title("Per-channel fusion weights")
    # Below the axes, so it never covers the curves.
    figure.legend(loc="outside lower center", ncols=2, frameon=False)
    return figure


def _spatial_figure(alpha: torch.Tensor, image: np.ndarray | None) -> Figure:
    size = image.shape[:2] if image is not None else (alpha.shape[0] * 16, alpha.shape[1] * 16)
    upsampled = torch.nn.functional.interpolate(alpha[None, None], size=size, mode="bilinear", align_corners=False)
    upsampled = upsampled[0, 0].numpy()
    figure = Figure(figsize=(4.5, 4.2), layout="constrained")
    ax = figure.subplots()
    if image is not None:
        ax.imshow(image)
    shown = ax.imshow(upsampled, cmap="viridis", vmin=0, vmax=1, alpha=0.55 if image is not None else 1.0)
    figure.colorbar(shown, ax=ax, location="bottom", label="stage3 weight alpha (stage4: 1 - alpha)")
    ax.set_title(f"Spatial fusion: mean alpha {float(alpha.mean()):.2f}")
    ax.set_axis_off()
    return figure


def cam_overlay(rgb: np.ndarray, mask: np.ndarray, min_side: int = MIN_OVERLAY_SIDE) -> np.ndarray:
    """`show_cam_on_image` of the CAM over the model's crop (float RGB in [0, 1]), upsampled (bilinear, with
    pytorch-grad-cam's `scale_cam_image`) to at least `min_side` pixels so that small-input models stay legible."""
    height, width = mask.shape
    scale = max(1.0, min_side / min(height, width))
    if scale > 1:
        size = (round(width * scale), round(height * scale))
        rgb = np.asarray(Image.fromarray((rgb * 255).round().astype(np.uint8)).resize(size, Image.BILINEAR)) / 255.0
        mask = scale_cam_image(mask[None].astype(np.float32), target_size=size)[0]
    return show_cam_on_image(rgb.astype(np.float32), np.clip(mask, 0, 1), use_rgb=True)


def with_colour_scale(overlay: np.ndarray, low: str = "low", high: str = "high") -> np.ndarray:
    """The overlay with the CAM colour scale (pytorch-grad-cam's jet map, 0 -> 1) drawn under it, labelled."""
    width = overlay.shape[1]
    ramp = np.tile(np.linspace(0, 1, width, dtype=np.float32), (COLORBAR_HEIGHT, 1))
    bar = show_cam_on_image(np.zeros((COLORBAR_HEIGHT, width, 3), np.float32), ramp, use_rgb=True, image_weight=0.0)
    labels = Image.new("RGB", (width, 16), (255, 255, 255))
    draw = ImageDraw.Draw(labels)
    draw.text((2, 2), low, fill=(0, 0, 0))
    text_width = draw.textlength(high)
    draw.text((width - text_width - 2, 2), high, fill=(0, 0, 0))
    return np.concatenate([overlay, bar, np.asarray(labels)], axis=0)


__all__ = ["cam_overlay", "fusion_figure", "fusion_message", "with_colour_scale"]
