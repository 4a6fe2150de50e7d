"""Figures for people: the fusion-weight views, the Grad-CAM overlay with its colour scale, the images with the
highest CAM frame share, and the evaluation report's figures (ROC, precision-recall, confusion, reliability, ROC per
source). Built with matplotlib's object API
(no pyplot), so they are safe in server threads; sized to stay readable at phone width."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image, ImageDraw
from pytorch_grad_cam.utils.image import scale_cam_image, show_cam_on_image
from sklearn.calibration import calibration_curve
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay, roc_curve

from .metrics.statistics import ECE_BINS, calibration_inputs

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
                "weights w of all channels sum to 1 (the paper's softmax over channels). Channel "
                f"{top} takes the most, w = {float(weights[top]):.3f}; "
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
    # Drawn for every analysis and encoded by Gradio each time: fixed margins rather than a layout engine (which
    # redraws to measure, ~40 % of the encoding time), and a small canvas whose text stays legible when a phone
    # scales it down to ~360 px.
    figure = Figure(figsize=(4.2, 3.3))
    figure.subplots_adjust(left=0.19, right=0.97, top=0.9, bottom=0.27)
    ax = figure.subplots()
    rank = np.arange(1, len(w) + 1)
    ax.plot(rank, w[order], label="stage3 weight w", color="tab:blue")
    ax.plot(rank, 1 - w[order], label="stage4 weight 1 - w", color="tab:orange")
    ax.set_yscale("log")
    ax.set_xlabel("channel, sorted by w", fontsize=11)
    ax.set_ylabel("weight (log scale)", fontsize=11)
    ax.tick_params(labelsize=10)
    ax.set_title("Per-channel fusion weights", fontsize=12)
    # Below the axes, so it never covers the curves.
    figure.legend(loc="lower center", ncols=2, frameon=False, fontsize=10, bbox_to_anchor=(0.5, 0.0))
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


def frame_share_figure(images: list[np.ndarray], cams: list[np.ndarray], titles: list[str], frame: float,
                       title: str = "", masks: list[np.ndarray | None] | None = None) -> Figure:
    """The images with the highest CAM frame share, 2 x 4 tiles: each the model's input (uint8 RGB) with its raw CAM
    over it (scaled by its maximum for display only, so zero stays blue), the frame's inner edge dashed and, where
    `masks` has one, the proxy lesion mask's outline in green. Sized for phone width: few, large words per tile
    (`titles`, two short lines)."""
    figure = Figure(figsize=(7.2, 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 4)
    for ax in axes.flat:
        ax.set_axis_off()
    masks = masks or [None] * len(images)
    for ax, image, cam, text, mask in zip(axes.flat, images, cams, titles, masks, strict=False):
        peak = float(cam.max())
        overlay = cam_overlay(image.astype(np.float32) / 255.0, cam / peak if peak > 0 else cam)
        ax.imshow(overlay)
        scale = overlay.shape[0] / cam.shape[0]
        top, side = round(cam.shape[0] * frame) * scale, round(cam.shape[1] * frame) * scale
        ax.add_patch(Rectangle((side - 0.5, top - 0.5), overlay.shape[1] - 2 * side, overlay.shape[0] - 2 * top,
                               fill=False, edgecolor="white", linestyle="--", linewidth=1.2))
        if mask is not None and mask.shape == cam.shape:  # drawn on the overlay's (maybe upsampled) pixel grid
            rows, cols = (np.arange(n) * scale + (scale - 1) / 2 for n in mask.shape)
            ax.contour(cols, rows, mask.astype(np.float32), levels=[0.5], colors="lime", linewidths=1.2)
        ax.set_title(text, fontsize=12)
    if title:
        figure.suptitle(title, fontsize=12)
    return figure


def image_grid_figure(rows: list[list[np.ndarray]], titles: list[list[str]], title: str = "") -> Figure:
    """Images (uint8 RGB) in a grid, one row per list, each with its (short, two-line) title; 7.2 in wide, for
    phone width (e.g. `modeling.occlusion`'s variants of a few images)."""
    columns = max(len(row) for row in rows)
    figure = Figure(figsize=(7.2, 2.5 * len(rows) + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for row_axes, row, row_titles in zip(axes, rows, titles, strict=True):
        for ax, image, text in zip(row_axes, row, row_titles, strict=False):
            ax.imshow(image)
            ax.set_title(text, fontsize=11)
    if title:
        figure.suptitle(title, fontsize=12)
    return figure


# The evaluation report's figures (`report.write_report`, `report.write_source_reports`): PNG files beside report.md.


def _new_axes(size: tuple[float, float] = (5, 5)):
    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)  # Agg, without touching pyplot's global backend
    return figure, figure.add_subplot()


def _save(figure: Figure, out_dir: Path, name: str, figures: list[str]) -> None:
    figure.savefig(out_dir / name, dpi=120)
    figures.append(name)


def _title_suffix(title: str) -> str:
    """A second title line with the report's title, shortened: the figures are 5 in wide."""
    return "\n" + textwrap.shorten(title, width=60, placeholder="…") if title else ""


def report_figures(out_dir: Path, labels: np.ndarray, probs: np.ndarray, label_names: list[str], threshold: float,
                   metrics: dict[str, float], title: str, uncalibrated: np.ndarray | None = None) -> list[str]:
    """The report's figures in `out_dir`, their file names returned: ROC and precision-recall (one-vs-rest; for two
    classes p(class 1) with the operating point at `threshold`), the confusion matrix at `threshold` (argmax for more
    classes) and the reliability diagram (with `uncalibrated`, the same model before temperature scaling too).
    `metrics` holds the point metrics and `ece` (and `ece_uncalibrated`) for the labels; `title` goes under each."""
    figures: list[str] = []
    num_classes = probs.shape[1]
    suffix = _title_suffix(title)
    # One-vs-rest curves: for two classes only the positive class; classes without positives and negatives skipped.
    curves = [1] if num_classes == 2 else list(range(num_classes))
    curves = [k for k in curves if 0 < (labels == k).sum() < len(labels)]
    if curves:
        for name, display in (("roc.png", RocCurveDisplay), ("pr.png", PrecisionRecallDisplay)):
            figure, ax = _new_axes()
            for k in curves:
                # One chance line: the diagonal for ROC; for PR it is the prevalence, so per class, only for binary.
                chance = k == curves[-1] and (name == "roc.png" or num_classes == 2)
                display.from_predictions(labels == k, probs[:, k], pos_label=True, name=label_names[k], ax=ax,
                                         plot_chance_level=chance)
            if num_classes == 2:  # the operating point at the decision threshold
                point = ((1 - metrics["specificity"], metrics["recall"]) if name == "roc.png"
                         else (metrics["recall"], metrics["precision"]))
                ax.plot(*point, "ko", label=f"threshold {threshold:.3g}")
                ax.legend(loc="lower right" if name == "roc.png" else "best")
            if name == "roc.png":
                ax.set(title="ROC" + suffix, xlabel="false positive rate (1 - specificity)",
                       ylabel="true positive rate (sensitivity)")
            else:
                ax.set(title="Precision-recall" + suffix, xlabel="recall (sensitivity)", ylabel="precision")
            _save(figure, out_dir, name, figures)

    predicted = (probs[:, 1] >= threshold).astype(np.int64) if num_classes == 2 else probs.argmax(1)
    figure, ax = _new_axes()
    ConfusionMatrixDisplay.from_predictions(labels, predicted, labels=list(range(num_classes)),
                                            display_labels=label_names, ax=ax, colorbar=False)
    ax.set_title((f"Confusion at threshold {threshold:.3g}" if num_classes == 2 else "Confusion (argmax)") + suffix)
    _save(figure, out_dir, "confusion.png", figures)

    confidence, outcome = calibration_inputs(labels, probs)
    prob_true, prob_pred = calibration_curve(outcome, confidence, n_bins=ECE_BINS)
    figure, ax = _new_axes()
    ax.plot([0, 1], [0, 1], "k:", label="perfectly calibrated")
    if uncalibrated is not None:  # before temperature scaling, for comparison
        before_true, before_pred = calibration_curve(*calibration_inputs(labels, uncalibrated)[::-1], n_bins=ECE_BINS)
        ax.plot(before_pred, before_true, "s--", color="tab:grey",
                label=f"before calibration (ECE {metrics['ece_uncalibrated']:.3f})")
    ax.plot(prob_pred, prob_true, "o-", label="model" if uncalibrated is None else "calibrated")
    counts = ax.twinx()
    counts.hist(confidence, bins=ECE_BINS, range=(0, 1), alpha=0.2, color="grey")
    counts.set_ylabel("images")
    what = f"p({label_names[1]})" if num_classes == 2 else "top-class probability"
    ax.set(xlabel=f"mean {what}", ylabel="observed frequency" if num_classes == 2 else "accuracy",
           xlim=(0, 1), ylim=(0, 1), title=f"Reliability (ECE {metrics['ece']:.3f}){suffix}")
    ax.legend(loc="upper left")
    _save(figure, out_dir, "reliability.png", figures)
    return figures


def roc_by_source_figure(out_dir: Path, labels: np.ndarray, probs: np.ndarray, sources: np.ndarray, names: list[str],
                         label_names: list[str], title: str) -> str | None:
    """`roc_by_source.png`: one ROC curve per source in `names` (`sources[i]` names row i) and the pooled one, for
    p(class 1); returns the file name, or None for more than two classes or when no source has both classes."""
    if probs.shape[1] != 2:
        return None
    figure, ax = _new_axes()
    groups = [(name, sources == name) for name in names] + [("pooled", np.ones(len(labels), dtype=bool))]
    drawn = 0
    for name, rows in groups:
        positive = labels[rows] == 1
        if 0 < positive.sum() < rows.sum():  # both classes present
            fpr, tpr, _ = roc_curve(positive, probs[rows, 1])
            ax.plot(fpr, tpr, "--" if name == "pooled" else "-",
                    label=f"{name} (n={rows.sum()}, AUC {np.trapezoid(tpr, fpr):.3f})")
            drawn += 1
    if not drawn:
        return None
    ax.plot([0, 1], [0, 1], "k:", label="chance")
    suffix = _title_suffix(title)
    ax.set(title=f"ROC per source, p({label_names[1]}){suffix}", xlabel="false positive rate (1 - specificity)",
           ylabel="true positive rate (sensitivity)")
    ax.legend(loc="lower right", fontsize="small")
    figure.savefig(out_dir / "roc_by_source.png", dpi=120)
    return "roc_by_source.png"


__all__ = ["cam_overlay", "frame_share_figure", "fusion_figure", "fusion_message", "report_figures",
           "roc_by_source_figure", "with_colour_scale"]
