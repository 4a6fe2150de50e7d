"""Lesion focus, measured: the CAM frame share of a model on a data set. For each image, the share of its Grad-CAM
mass (fused map, the image's TRUE class, the raw map before any min-max scaling: `explain.raw_grad_cams`) in the
outer 1/8 of each side of the model's input (`explain.cam_frame_share`; 43.75 % of the area, so a uniform map scores
0.4375). Lower is better: dermoscopy centres the lesion, so a model reading the lesion keeps its CAM off the frame.

    python -m modeling.lesion_focus MODEL_DIR --dataset FOLDER [FOLDER2 ...] --output_dir DIR [--split test]
        [--limit N]

writes `cam_frame_share.json` (summary: mean with a bootstrap 95 % CI, median, share of images above uniform, n, the
count of all-zero CAMs, which are left out; per source and pooled; and every image's value) and
`cam_frame_share_worst.png` (the 8 images with the highest share) into DIR. The report
written after training (`training.train_one`, `evaluate_only`) includes the same, on the test split.

A reference without segmentations (`lesion_mask`, `lesion_reference`): a proxy lesion mask per image (the dark blob
that Otsu's threshold finds, the classic unsupervised dermoscopy segmentation) gives what a CAM that followed the
lesion would score (the mask's own frame share), the share of the CAM's mass on the lesion against the mask's share
of the area (lift 1: no preference for the lesion), and how the CAM's frame share tracks the lesion's (Spearman).
It is a proxy: hair, rulers and dark vignettes fool Otsu's threshold on some images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from .decision import calibrated_probabilities, temperature
from .explain import _denormalise, cam_frame_share, cam_target_layer, raw_grad_cams
from .image_utils import ImageSource, load_image, to_rgb
from .metrics.statistics import _bootstrap, finite_or_none

FRAME = 1 / 8
UNIFORM_FRAME_SHARE = 1 - (1 - 2 * FRAME) ** 2  # 0.4375: the share of a uniform map
SAMPLE_SEED = 0  # fixed, so that every model evaluated on the same split gets the same sample
JSON_FILE = "cam_frame_share.json"
FIGURE_FILE = "cam_frame_share_worst.png"
WORST = 8
DEFINITION = ("share of Grad-CAM mass (pytorch-grad-cam GradCAM at the CAM target, for the image's true class; the "
              "ReLU'd map upsampled bilinearly to the model's input size, not min-max scaled) in the outer 1/8 of "
              "each side of the input; all-zero CAMs are counted and left out")


@dataclass
class WorstImage:
    """One image for the figure of the worst: the model's input (uint8 RGB), its raw CAM, and what the tile says."""

    share: float
    index: int
    image: np.ndarray
    cam: np.ndarray
    mask: np.ndarray | None = None  # the proxy lesion mask (`lesion_mask`), if one was found


@dataclass
class FrameShareResult:
    summary: dict  # pooled; with several sources also "sources": {name: summary}
    per_image: list[dict]  # id, (source,) label, frame_share (None: all-zero CAM), p
    worst: list[WorstImage] = field(default_factory=list)  # highest share first
    label_names: list[str] = field(default_factory=list)


def stratified_sample(groups: Sequence, limit: int | None, seed: int = SAMPLE_SEED) -> np.ndarray:
    """Sorted indices of a seeded sample of `limit` rows with each group (a label, or a (source, label) pair) in
    proportion (largest remainder); every row when `limit` is None or not below the number of rows."""
    keys = [str(g) for g in groups]
    n = len(keys)
    if limit is None or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    names = list(dict.fromkeys(keys))
    rows = {name: np.flatnonzero(np.asarray(keys) == name) for name in names}
    quota = np.array([limit * len(rows[name]) / n for name in names])
    counts = np.floor(quota).astype(int)
    for k in np.argsort(-(quota - counts), kind="stable")[: limit - counts.sum()]:
        counts[k] += 1
    chosen = [rng.choice(rows[name], size=count, replace=False) for name, count in zip(names, counts, strict=True)]
    return np.sort(np.concatenate(chosen))


MASK_SMOOTHING = 0.01  # Gaussian sigma, as a share of the image side: hair and pores do not split the lesion
MASK_HAIR = 0.04  # the closing window for hair removal, as a share of the side (9 px at 224)
MASK_OPENING = 2  # iterations of a binary opening: strips thin dark structures (hair, ruler ticks) off the blob
MASK_BLACK = 0.2  # grey level (0-1) below which a region reaching the corners is the dermoscope's black surround
MASK_RIM = 0.05  # how far (a share of the side) the field of view's rim is left out
MASK_CONTRAST = 0.05  # the least difference of Otsu's two class means (grey levels 0-1) that counts as a lesion
MASK_CORNER = 0.03  # a region within this share of the side from an image corner is a vignette, not the lesion
MASK_AREA_RANGE = (0.005, 0.9)  # outside it no lesion was found (nothing dark, or the whole image dark)
MASK_DEFINITION = ("proxy lesion mask: of the regions darker than Otsu's threshold of the grey model input (hair "
                   "closed away, smoothed; the threshold taken inside the field of view: without a black surround "
                   "reaching the corners, nor its rim; after a binary opening), the one with the most area near the "
                   "centre (size x (1 - d)^2, d: its centroid's distance from the centre over the half-diagonal), "
                   "holes filled, leaving out regions near an image corner (dark vignettes); no mask when the two "
                   "classes' means differ by under 0.05 or the region covers under 0.5 % or over 90 % of the image")


def lesion_mask(image: np.ndarray) -> np.ndarray | None:
    """A proxy lesion mask (H, W) bool of an RGB image (H, W, 3), uint8 or float in [0, 1]: the central dark region
    that Otsu's threshold finds (`MASK_DEFINITION`); None when no plausible lesion region is found."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    scale = 255.0 if np.issubdtype(image.dtype, np.integer) else 1.0
    grey = image.astype(np.float64).mean(-1) / scale
    # Hair removal as in DullRazor: a grey closing fills dark structures thinner than its window (hair, ruler ticks).
    hair = max(3, round(MASK_HAIR * min(image.shape[:2])) | 1)
    grey = ndimage.gaussian_filter(ndimage.grey_closing(grey, size=(hair, hair)), MASK_SMOOTHING * max(image.shape[:2]))
    k = max(3, round(MASK_CORNER * min(image.shape[:2])))  # the opening erodes at the border: look near each corner

    def near_corners(regions: np.ndarray) -> set:
        return set(np.unique(np.concatenate([regions[:k, :k], regions[:k, -k:], regions[-k:, :k], regions[-k:, -k:]],
                                            axis=None)))

    # A dermoscope's black surround is not skin: Otsu's threshold is taken inside the field of view only, or it
    # would split black from everything else and miss the lesion.
    black, _ = ndimage.label(grey < MASK_BLACK)
    outside = np.isin(black, list(near_corners(black) - {0}))
    if outside.any():  # with the field of view's dim rim, which would otherwise ring (and fill) the whole field
        outside = ndimage.binary_dilation(outside, iterations=round(MASK_RIM * min(image.shape[:2])))
    inside = grey[~outside]
    if inside.size == 0 or np.ptp(inside) == 0:
        return None
    threshold = threshold_otsu(inside)
    if inside[inside >= threshold].mean() - inside[inside < threshold].mean() < MASK_CONTRAST:
        return None  # no region stands out from the skin
    dark = ndimage.binary_opening((grey < threshold) & ~outside, iterations=MASK_OPENING)
    regions, count = ndimage.label(dark)
    corners = near_corners(regions)
    labels = range(1, count + 1)
    sizes = ndimage.sum(dark, regions, labels)
    # Dermoscopy centres the lesion: a region's size counts less the farther its centroid is from the image centre
    # (weight (1 - d)^2, d = distance over the half-diagonal), so an edge band or a ruler does not win on size alone.
    centre = (np.asarray(image.shape[:2]) - 1) / 2
    distance = [np.hypot(*(np.asarray(c) - centre)) / np.hypot(*centre) for c in
                ndimage.center_of_mass(dark, regions, labels)] if count else []
    candidates = [(size * (1 - min(d, 1.0)) ** 2, label) for label, size, d in
                  zip(labels, sizes, distance, strict=True) if label not in corners]
    if not candidates:
        return None
    mask = ndimage.binary_fill_holes(regions == max(candidates)[1])
    return mask if MASK_AREA_RANGE[0] <= mask.mean() <= MASK_AREA_RANGE[1] else None


def cam_lesion_share(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of a non-negative CAM's mass inside `mask` (same shape); NaN for an all-zero map."""
    cam = np.asarray(cam, dtype=np.float64)
    if cam.shape != mask.shape:
        raise ValueError(f"CAM {cam.shape} and mask {mask.shape} must have the same shape")
    total = cam.sum()
    return float(cam[mask].sum() / total) if total > 0 else float("nan")


def cam_grid(model, pixel_values: torch.Tensor, target: str = "fused") -> tuple[int, int]:
    """(H, W) of the map at the CAM target for inputs like `pixel_values`: one forward of the first image, in eval
    mode (no batch-norm statistics move), the model's mode restored."""
    from .inference import MODEL_LOCK

    layer, _ = cam_target_layer(model, target)
    seen: dict = {}

    def record(module, args, output) -> None:
        seen["shape"] = tuple((output[0] if isinstance(output, tuple) else output).shape[-2:])

    with MODEL_LOCK:
        training = model.training
        handle = layer.register_forward_hook(record)
        try:
            with torch.no_grad():
                model.eval()(pixel_values=pixel_values[:1])
        finally:
            handle.remove()
            model.train(training)
    return seen["shape"]


def mask_at_grid(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The mask as a CAM at `grid` resolution would show it: averaged onto the grid, then upsampled bilinearly to the
    mask's size as the raw CAMs are (`explain.raw_grad_cams`). What a CAM that was exactly the lesion could score."""
    import cv2

    height, width = mask.shape
    coarse = cv2.resize(mask.astype(np.float32), (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
    return np.maximum(cv2.resize(coarse, (width, height)), 0)


def lesion_reference(frame_share: np.ndarray, lesion_share: np.ndarray, mask_area: np.ndarray,
                     mask_frame_share: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                     grid_frame_share: np.ndarray | None = None, grid_lesion_share: np.ndarray | None = None,
                     grid: tuple[int, int] | None = None) -> dict:
    """The summary of the proxy-mask reference over the images with a mask and a non-zero CAM (NaN elsewhere; the
    others are counted in `n_left_out`): the
    masks' own frame share (what a CAM equal to the lesion would score), the CAM's mass on the lesion with a bootstrap
    CI, the masks' area share, their ratio (lift; 1 = no preference for the lesion) and the Spearman correlation of
    the CAM's and the lesion's frame shares. With `grid_*` (the mask as a CAM at the CAM's `grid` resolution:
    `mask_at_grid`), also what such a lesion-following CAM would score: its frame share and lift."""
    from scipy.stats import spearmanr

    arrays = [np.asarray(a, dtype=np.float64) for a in (frame_share, lesion_share, mask_area, mask_frame_share)]
    valid = np.all([np.isfinite(a) for a in arrays], axis=0)
    frame_share, lesion_share, mask_area, mask_frame_share = (a[valid] for a in arrays)
    at_grid = None
    if grid is not None and grid_frame_share is not None and grid_lesion_share is not None and valid.any():
        grid_frame, grid_lesion = (np.asarray(a, dtype=np.float64)[valid] for a in (grid_frame_share,
                                                                                   grid_lesion_share))
        at_grid = {"grid": list(grid), "frame_share": float(grid_frame.mean()),
                   "lift": float(grid_lesion.mean() / mask_area.mean()) if mask_area.mean() > 0 else None}
    n = int(valid.sum())
    summary = {"definition": MASK_DEFINITION, "n": n, "n_left_out": int((~valid).sum())}
    if n == 0:
        return summary
    on_lesion = summarise(lesion_share, n_resamples=n_resamples, seed=seed)
    varies = n >= 3 and np.ptp(frame_share) > 0 and np.ptp(mask_frame_share) > 0
    spearman = spearmanr(frame_share, mask_frame_share).statistic if varies else float("nan")
    summary.update({
        "mask_frame_share": {"mean": float(mask_frame_share.mean()), "median": float(np.median(mask_frame_share))},
        "cam_on_lesion": {"mean": on_lesion["mean"], "mean_ci95": on_lesion["mean_ci95"],
                          "median": on_lesion["median"]},
        "mask_area": float(mask_area.mean()),
        "lift": float(lesion_share.mean() / mask_area.mean()) if mask_area.mean() > 0 else None,
        "frame_share_spearman": float(spearman),
        **({"lesion_as_cam": at_grid} if at_grid else {}),
    })
    return finite_or_none(summary)


class LabelledSample(NamedTuple):
    images: Sequence
    labels: np.ndarray
    ids: list[str]
    sources: list[str] | None
    n_total: int  # before sampling


def labelled_sample(images, labels, ids, sources, limit: int | None, seed: int = SAMPLE_SEED,
                    missing_labels: str = "the true labels are needed") -> LabelledSample:
    """The images to measure, their true labels (the model's class ids), ids and sources: from a `datasets.Dataset`
    split (its `label`, `source`, `path` columns; no training transform) or from the lists given, checked to match,
    then a seeded sample of `limit` stratified by source and label (all of them without a limit)."""
    if hasattr(images, "column_names"):
        images = images.with_format(None)
        labels = images["label"] if labels is None else labels
        sources = images["source"] if sources is None and "source" in images.column_names else sources
        ids = images["path"] if ids is None and "path" in images.column_names else ids
    if labels is None:
        raise ValueError(missing_labels)
    labels = np.asarray(labels, dtype=np.int64)
    n_total = len(labels)
    ids = [str(i) for i in range(n_total)] if ids is None else [str(i) for i in ids]
    if len(ids) != n_total or len(images) != n_total or (sources is not None and len(sources) != n_total):
        raise ValueError(f"{len(images)} images, {n_total} labels, {len(ids)} ids"
                         + ("" if sources is None else f", {len(sources)} sources") + ": they must match")
    groups = labels if sources is None else [f"{s}\0{k}" for s, k in zip(sources, labels, strict=True)]
    chosen = stratified_sample(groups, limit, seed)
    if len(chosen) < n_total:
        images = images.select(chosen) if hasattr(images, "select") else [images[i] for i in chosen]
        labels, ids = labels[chosen], [ids[i] for i in chosen]
        sources = None if sources is None else [sources[i] for i in chosen]
    return LabelledSample(images, labels, ids, None if sources is None else list(sources), n_total)


def summarise(values: np.ndarray, labels: np.ndarray | None = None, label_names: Sequence[str] | None = None,
              n_resamples: int = 1000, seed: int = 0) -> dict:
    """mean (with a percentile-bootstrap 95 % CI), median, share of images above the uniform 0.4375 and n of the
    frame shares `values` (NaN: an all-zero CAM, counted in `n_zero_cam` and left out); per label when given."""
    values = np.asarray(values, dtype=np.float64)
    zero = np.isnan(values)
    valid = values[~zero]
    ci = None
    if len(valid) >= 2 and n_resamples > 0:
        low, high = _bootstrap(lambda index: {"mean": valid[index].mean(axis=1)}, len(valid), ["mean"], n_resamples,
                               0.95, seed, "percentile", memory_width=2_000_000)
        ci = [float(low[0]), float(high[0])]
    summary = {
        "n": int(len(valid)),
        "n_zero_cam": int(zero.sum()),
        "mean": float(valid.mean()) if len(valid) else None,
        "mean_ci95": ci,
        "median": float(np.median(valid)) if len(valid) else None,
        "share_above_uniform": float((valid > UNIFORM_FRAME_SHARE).mean()) if len(valid) else None,
    }
    if labels is not None and label_names is not None:
        labels = np.asarray(labels)
        summary["by_label"] = {
            name: summarise(values[labels == k], n_resamples=0) for k, name in enumerate(label_names)
            if (labels == k).any()}
        for part in summary["by_label"].values():
            part.pop("mean_ci95")
    return finite_or_none(summary)


def _batches(images, start: int, stop: int) -> list:
    """Images `start:stop` as RGB PIL images: from a `datasets.Dataset` (decoded one batch at a time) or a list of
    image sources (paths, bytes, PIL images)."""
    if hasattr(images, "column_names"):
        return [to_rgb(image) for image in images[start:stop]["image"]]
    return [load_image(image) for image in images[start:stop]]


def frame_shares(
    model,
    processor,
    images: Sequence[ImageSource],
    labels: Sequence[int] | None = None,
    *,
    ids: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    limit: int | None = None,
    seed: int = SAMPLE_SEED,
    batch_size: int = 16,
    progress: bool = True,
    target: str = "fused",
    n_resamples: int = 1000,
    worst: int = WORST,
    contrast: bool = False,
) -> FrameShareResult:
    """The CAM frame share of every image (or of a seeded sample of `limit`, stratified by source and label), each
    for its true class (`labels`: the model's class ids), summarised pooled and, with several `sources`, per source.
    `images`: image sources, or a `datasets.Dataset` split with `image` and `label` (and `path`, `source`) columns,
    decoded a batch at a time. Keeps the `worst` images (highest share) for the figure. `contrast`: each true class
    against the other(s) (`explain.ClassMarginTarget`, what the app shows by default) instead of its logit alone."""
    images, labels, ids, sources, n_total = labelled_sample(
        images, labels, ids, sources, limit, seed,
        missing_labels="frame_shares needs the true labels (the CAM explains each image's true class)")
    label_names = [str(model.config.id2label[k]) for k in sorted(model.config.id2label)]
    if len(labels) and (labels.min() < 0 or labels.max() >= len(label_names)):
        raise ValueError(f"labels must be the model's class ids 0..{len(label_names) - 1}")
    start_time = time.perf_counter()
    shares = np.full(len(labels), np.nan)
    # The proxy-mask reference (`lesion_mask`), on the same input the CAM explains.
    on_lesion, mask_area, mask_frame, grid_frame, grid_lesion = (np.full(len(labels), np.nan) for _ in range(5))
    grid = None
    probs = np.zeros((len(labels), len(label_names)), dtype=np.float32)
    kept: list[WorstImage] = []
    size = None
    with tqdm(total=len(labels), desc="CAM frame share", unit="img", disable=not progress) as bar:
        for start in range(0, len(labels), batch_size):
            stop = min(start + batch_size, len(labels))
            inputs = processor(images=_batches(images, start, stop), return_tensors="pt")["pixel_values"].float()
            cams, logits = raw_grad_cams(model, inputs, labels[start:stop], target, contrast=contrast)
            grid = grid or cam_grid(model, inputs, target)
            size = cams.shape[1:]
            probs[start:stop] = calibrated_probabilities(logits, temperature(model.config)).numpy()
            masks = {}
            for offset, cam in enumerate(cams):
                shares[start + offset] = cam_frame_share(cam, FRAME)
                mask = masks[offset] = lesion_mask(_denormalise(processor, inputs[offset:offset + 1]))
                if mask is not None and mask.shape == cam.shape:
                    on_lesion[start + offset] = cam_lesion_share(cam, mask)
                    mask_area[start + offset] = mask.mean()
                    mask_frame[start + offset] = cam_frame_share(mask.astype(np.float64), FRAME)
                    as_cam = mask_at_grid(mask, grid)
                    grid_frame[start + offset] = cam_frame_share(as_cam, FRAME)
                    grid_lesion[start + offset] = cam_lesion_share(as_cam, mask)
            order = [i for i in np.argsort(-np.nan_to_num(shares[start:stop], nan=-1.0), kind="stable")[:worst]
                     if not np.isnan(shares[start + i])]
            kept += [WorstImage(float(shares[start + i]), start + i,
                                (_denormalise(processor, inputs[i:i + 1]) * 255).round().astype(np.uint8), cams[i],
                                masks[i]) for i in order]
            kept = sorted(kept, key=lambda w: (-w.share, w.index))[:worst]
            bar.update(stop - start)
    binary = len(label_names) == 2
    # p: calibrated p(class 1) for two classes (the decision's probability), else p(true class).
    p = probs[:, 1] if binary else probs[np.arange(len(labels)), labels]
    summary = {
        "definition": DEFINITION,
        "target": target,
        "method": "gradcam",
        "cam_class": "true label against the other class(es) (logit margin)" if contrast else "true label",
        "frame": FRAME,
        "input_size": None if size is None else list(size),
        "frame_px": None if size is None else [round(size[0] * FRAME), round(size[1] * FRAME)],
        "uniform_share": UNIFORM_FRAME_SHARE,
        "images": n_total,
        "sample": None if len(labels) == n_total else {
            "limit": limit, "seed": seed,
            "stratified_by": "source and label" if sources is not None and len(set(sources)) > 1 else "label"},
        "p": f"calibrated p({label_names[1]})" if binary else "calibrated p(true class)",
        **summarise(shares, labels, label_names, n_resamples),
        "lesion_reference": lesion_reference(shares, on_lesion, mask_area, mask_frame, n_resamples,
                                             grid_frame_share=grid_frame, grid_lesion_share=grid_lesion, grid=grid),
        "seconds": round(time.perf_counter() - start_time, 1),
    }
    if sources is not None and len(set(sources)) > 1:
        column = np.asarray(sources, dtype=object)
        summary["sources"] = {name: {
            **summarise(shares[column == name], labels[column == name], label_names, n_resamples),
            "lesion_reference": lesion_reference(
                *(a[column == name] for a in (shares, on_lesion, mask_area, mask_frame)), n_resamples,
                grid_frame_share=grid_frame[column == name], grid_lesion_share=grid_lesion[column == name],
                grid=grid)}
            for name in dict.fromkeys(sources)}
    per_image = [{"id": ids[i], **({} if sources is None else {"source": str(sources[i])}),
                  "label": label_names[labels[i]],
                  "frame_share": None if np.isnan(shares[i]) else round(float(shares[i]), 5),
                  "p": round(float(p[i]), 5),
                  "lesion_share": None if np.isnan(on_lesion[i]) else round(float(on_lesion[i]), 5),
                  "mask_area": None if np.isnan(mask_area[i]) else round(float(mask_area[i]), 5),
                  "mask_frame_share": None if np.isnan(mask_frame[i]) else round(float(mask_frame[i]), 5)}
                 for i in range(len(labels))]
    return FrameShareResult(summary, per_image, kept, label_names)


def tile_title(row: dict, p_name: str) -> str:
    """Two short lines for a tile of the worst-images figure: frame share and true label, predicted p."""
    return f"{row['frame_share']:.2f} · {row['label']}\n{p_name} {row['p']:.2f}"


def write_frame_share(out_dir: str | Path, result: FrameShareResult, title: str = "") -> list[str]:
    """`cam_frame_share.json` (summary and per-image values) and `cam_frame_share_worst.png` into `out_dir`; returns
    the file names written."""
    from .plots import frame_share_figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / JSON_FILE).write_text(json.dumps({"summary": result.summary, "images": result.per_image}, indent=1)
                                     + "\n")
    written = [JSON_FILE]
    if result.worst:
        binary = len(result.label_names) == 2
        p_name = f"p({result.label_names[1]})" if binary else "p(true)"
        figure = frame_share_figure(
            [w.image for w in result.worst], [w.cam for w in result.worst],
            [tile_title(result.per_image[w.index], p_name) for w in result.worst], FRAME,
            f"Highest CAM frame shares ({result.summary['n']} images, mean {result.summary['mean']:.2f})"
            + (f"\n{title}" if title else "")
            + ("\ngreen: proxy lesion mask" if any(w.mask is not None for w in result.worst) else ""),
            masks=[w.mask for w in result.worst])
        figure.savefig(out_dir / FIGURE_FILE, dpi=120)
        written.append(FIGURE_FILE)
    return written


def report_frame_share(report_dir: str | Path, model, processor, split, ids: Sequence[str] | None = None,
                       limit: int | None = None, progress: bool = True, title: str = "") -> dict:
    """The report's frame-share part: `frame_shares` on a split (its labels, sources; a seeded stratified sample of
    `limit`), the JSON and figure in `report_dir`, and a section appended to its `report.md`. Returns the summary
    (what metrics.json and the model card show)."""
    from .report import append_frame_share_section

    result = frame_shares(model, processor, split, ids=ids, limit=limit, progress=progress)
    files = write_frame_share(report_dir, result, title)
    append_frame_share_section(report_dir, result.summary, FIGURE_FILE if FIGURE_FILE in files else None)
    return result.summary


def add_data_arguments(parser: argparse.ArgumentParser, default_split: str = "test") -> None:
    """The CLI arguments that pick a model and the images it is measured on (`evaluation_split` reads them)."""
    parser.add_argument("model_dir", help="a saved model (directory or Hub id)")
    parser.add_argument("--dataset", nargs="+", required=True,
                        help="one or more image folders (<split>/<label>/* or <label>/*) or Hub dataset ids")
    parser.add_argument("--split", default=default_split, choices=["test", "validation", "train"],
                        help="test: each source's test split, or all of a source without one; validation/train: "
                             "carved as train_hf.py does (--validation_fraction, --split_seed) (default: "
                             "%(default)s)")
    parser.add_argument("--validation_fraction", type=float, default=0.15)
    parser.add_argument("--split_seed", type=int, default=42)
    parser.add_argument("--limit", type=int, help="a seeded sample of this many images, stratified by source and "
                                                   "label (default: all)")
    parser.add_argument("--seed", type=int, default=SAMPLE_SEED, help="seed of the --limit sample")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--output_dir", type=Path, required=True,
                        help="where the results go (never the model's own report/, which it would overwrite)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def output_dir(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """Where a measuring CLI writes (`--output_dir`), after checking `--limit`."""
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    return args.output_dir


def evaluation_split(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple:
    """The model (`load_classifier`) and the split `args` name: (model, processor, split, labels in the model's ids,
    image ids, source names). Exits with a clear message (status 2: the data; 1: the model) on what cannot work."""
    from .data import DataError, build_dataset_dict, in_model_label_order
    from .inference import load_classifier
    from .training import sample_ids

    try:
        if args.split == "test":
            prepared = build_dataset_dict(args.dataset, validation_fraction=0.0, evaluation_only=True)
        else:
            prepared = build_dataset_dict(args.dataset, validation_fraction=args.validation_fraction,
                                          seed=args.split_seed)
    except DataError as error:
        parser.exit(2, f"error: {error}\n")
    if args.split not in prepared.dataset:
        parser.exit(2, f"error: the data has no {args.split} split\n")
    try:
        model, processor, _ = load_classifier(args.model_dir)
    except Exception as error:  # missing directory, unknown Hub id, offline
        parser.exit(1, f"Could not load a model from {args.model_dir}: {type(error).__name__}: {error}\n")
    try:  # the data's label ids in the model's order (same names, maybe another order)
        in_model_label_order(prepared, [model.config.id2label[k] for k in sorted(model.config.id2label)])
    except DataError as error:
        parser.exit(2, f"error: {error}\n")
    split = prepared.dataset[args.split].with_format(None)
    labels = list(split["label"])
    return model, processor, split, labels, sample_ids(split, prepared.source_roots), list(prepared.sources)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m modeling.lesion_focus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--target", default="fused", help="CAM target layer: fused, stage4 or stage3")
    parser.add_argument("--contrast", action="store_true",
                        help="explain each true class against the other(s) (the logit margin, as the app shows by "
                             "default) instead of its logit alone")
    args = parser.parse_args(argv)
    out = output_dir(parser, args)

    from .report import frame_share_markdown

    model, processor, split, labels, ids, sources = evaluation_split(parser, args)
    result = frame_shares(model, processor, split, labels, ids=ids,
                          limit=args.limit, seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress,
                          target=args.target, contrast=args.contrast)
    title = (f"{Path(args.model_dir).name} on {' + '.join(sources)} ({args.split})"
             + ("\ntrue class against the other (margin)" if args.contrast else ""))
    write_frame_share(out, result, title)
    print(frame_share_markdown(result.summary, None))
    print(f"\nwritten: {out / JSON_FILE}" + (f", {out / FIGURE_FILE}" if result.worst else ""),
          file=sys.stderr)
    return result.summary


__all__ = [
    "FRAME",
    "FrameShareResult",
    "UNIFORM_FRAME_SHARE",
    "add_data_arguments",
    "cam_grid",
    "cam_lesion_share",
    "evaluation_split",
    "frame_shares",
    "labelled_sample",
    "lesion_mask",
    "lesion_reference",
    "main",
    "mask_at_grid",
    "output_dir",
    "report_frame_share",
    "stratified_sample",
    "summarise",
    "write_frame_share",
]


if __name__ == "__main__":
    main()
