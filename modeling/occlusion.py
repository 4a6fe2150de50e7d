"""Does the model need the lesion? An occlusion test on the proxy lesion masks of `modeling.lesion_focus`: ROC AUC on
each image as it is, with the lesion erased (the mask, grown by 5 % of the side, inpainted from the skin around it)
and with the context erased (everything outside the grown mask filled with the skin's median colour), pooled and per
source, each erasure paired with the original by a bootstrap over images.

A model that reads the lesion falls to chance without it and keeps most of its ROC AUC without the context. A model
well above chance with the lesion erased reads something else: the skin around it, the acquisition, the collection.
Bissoto et al. (2019, "(De)Constructing Bias on Skin Lesion Datasets") found ISIC classifiers far above chance with
the lesion occluded.

    python -m modeling.occlusion MODEL_DIR --dataset FOLDER [FOLDER2 ...] --output_dir DIR [--split validation]
        [--limit N]

writes `occlusion.json` (per group and variant: n and ROC AUC with its 95 % CI; each erasure minus the original with
its paired CI; per image: source, label, p per variant) and `occlusion_examples.png` (three images, as the model saw
them in each variant) into DIR. Images where no proxy mask is found are left out and
counted. Default split: validation (carved as train_hf.py does), so that the test split stays for the model's own
report.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .decision import calibrated_probabilities, decision_threshold, temperature
from .explain import _denormalise
from .lesion_focus import (
    SAMPLE_SEED,
    _batches,
    add_data_arguments,
    evaluation_split,
    labelled_sample,
    lesion_mask,
    output_dir,
)
from .metrics import compute_classification_metrics
from .metrics.statistics import bootstrap_ci, finite_or_none, paired_bootstrap

VARIANTS = ("original", "lesion erased", "context erased")
GROWTH = 0.05  # the mask is grown by this share of the side: proxy masks miss a lesion's faint rim
EXAMPLES = 3
JSON_FILE = "occlusion.json"
FIGURE_FILE = "occlusion_examples.png"


def occlude(image: np.ndarray, mask: np.ndarray, erase: str, growth: float = GROWTH) -> np.ndarray | None:
    """A copy of an RGB image (H, W, 3) in [0, 1] with the `"lesion"` (the mask grown by `growth` of the side)
    inpainted from the skin around it (OpenCV's Telea inpainting, so that no flat patch marks the spot), or with the
    `"context"` (everything else) filled with the skin's median colour; None when the grown mask leaves no skin."""
    import cv2
    from scipy import ndimage

    if erase not in ("lesion", "context"):
        raise ValueError(f"erase must be 'lesion' or 'context', got {erase!r}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {image.shape[:2]} must have the same size")
    grown = ndimage.binary_dilation(mask, iterations=max(1, round(growth * min(mask.shape))))
    if grown.all():
        return None
    if erase == "lesion":
        pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        radius = max(3, round(growth * min(mask.shape)))
        return cv2.inpaint(pixels, grown.astype(np.uint8), radius, cv2.INPAINT_TELEA).astype(np.float32) / 255.0
    out = np.array(image, dtype=np.float32)
    out[~grown] = np.median(image[~grown], axis=0)
    return out


def _normalise(processor, image: np.ndarray) -> torch.Tensor:
    """The inverse of `explain._denormalise`: an RGB image (H, W, 3) in [0, 1] as the model's input (3, H, W)."""
    x = np.asarray(image, dtype=np.float32)
    if getattr(processor, "do_normalize", False):
        x = (x - np.asarray(processor.image_mean, np.float32)) / np.asarray(processor.image_std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


@dataclass
class OcclusionResult:
    summary: dict  # pooled ("all") and per source: n, ROC AUC per variant, differences
    per_image: list[dict]  # id, (source,) label, p per variant (None: no mask)
    examples: list[list[np.ndarray]] = field(default_factory=list)  # per example, uint8 RGB per variant
    example_titles: list[list[str]] = field(default_factory=list)


def _group_summary(labels: np.ndarray, probs: dict[str, np.ndarray], threshold: float, n_resamples: int,
                   areas: np.ndarray) -> dict:
    """ROC AUC of each variant with its CI, and each erasure minus the original, paired; and the ROC AUC of the
    proxy mask's area alone (binary labels): how much the erased area's size could give the lesion away."""
    summary: dict = {"n": int(len(labels))}
    if len(set(labels.tolist())) < 2:  # ROC AUC needs both classes
        return summary
    if set(labels.tolist()) == {0, 1}:  # the area (a share in [0, 1]) scored as if it were p(class 1)
        area_scores = np.stack([1 - areas, areas], axis=1)
        summary["mask_area_roc_auc"] = compute_classification_metrics(area_scores, labels)["roc_auc"]
    for name in VARIANTS:
        point = compute_classification_metrics(probs[name], labels, threshold)["roc_auc"]
        ci = bootstrap_ci(labels, probs[name], threshold, n_resamples=n_resamples)["roc_auc"]
        summary[name] = {"roc_auc": point, "roc_auc_ci95": list(ci)}
        if name != "original":
            summary[name]["minus_original"] = paired_bootstrap(labels, probs[name], probs["original"], threshold,
                                                               threshold, n_resamples=n_resamples)["roc_auc"]
    return finite_or_none(summary)


def occlusion_test(
    model,
    processor,
    images: Sequence,
    labels: Sequence[int] | None = None,
    *,
    ids: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    limit: int | None = None,
    seed: int = SAMPLE_SEED,
    batch_size: int = 16,
    progress: bool = True,
    n_resamples: int = 1000,
) -> OcclusionResult:
    """The occlusion test on `images` (image sources, or a `datasets.Dataset` split with `image`, `label` and
    optionally `source` and `path` columns) with their true `labels` (the model's class ids): calibrated
    probabilities for the three `VARIANTS` of every image with a proxy lesion mask, summarised pooled and per source.
    `limit`: a seeded sample, stratified by source and label."""
    images, labels, ids, sources, _ = labelled_sample(images, labels, ids, sources, limit, seed,
                                                      missing_labels="occlusion_test needs the true labels")
    label_names = [str(model.config.id2label[k]) for k in sorted(model.config.id2label)]
    threshold = decision_threshold(model.config) if len(label_names) == 2 else 0.5
    from .inference import MODEL_LOCK

    probs = {name: np.full((len(labels), len(label_names)), np.nan, dtype=np.float32) for name in VARIANTS}
    areas = np.full(len(labels), np.nan)
    examples, titles = [], []
    with tqdm(total=len(labels), desc="occlusion", unit="img", disable=not progress) as bar:
        for start in range(0, len(labels), batch_size):
            stop = min(start + batch_size, len(labels))
            inputs = processor(images=_batches(images, start, stop), return_tensors="pt")["pixel_values"].float()
            rows, views = [], {name: [] for name in VARIANTS}
            for offset in range(stop - start):
                seen = _denormalise(processor, inputs[offset:offset + 1])
                mask = lesion_mask(seen)
                erased = None if mask is None else [occlude(seen, mask, part) for part in ("lesion", "context")]
                if erased is None or any(view is None for view in erased):
                    continue
                rows.append(start + offset)
                areas[start + offset] = mask.mean()
                for name, view in zip(VARIANTS, [inputs[offset], *(_normalise(processor, e) for e in erased)],
                                      strict=True):
                    views[name].append(view)
            if rows:
                stacked = torch.cat([torch.stack(views[name]) for name in VARIANTS])
                with MODEL_LOCK, torch.no_grad():
                    training = model.training
                    try:
                        logits = model.eval()(pixel_values=stacked).logits
                    finally:
                        model.train(training)
                calibrated = calibrated_probabilities(logits, temperature(model.config)).numpy()
                for k, name in enumerate(VARIANTS):
                    probs[name][rows] = calibrated[k * len(rows):(k + 1) * len(rows)]
                for j, row in enumerate(rows[:EXAMPLES - len(examples)]):
                    examples.append([(_denormalise(processor, views[name][j][None]) * 255).round().astype(np.uint8)
                                     for name in VARIANTS])
                    positive = label_names[-1]
                    titles.append([f"{name}\np({positive}) {probs[name][row, -1]:.2f}" for name in VARIANTS])
            bar.update(stop - start)
    with_mask = ~np.isnan(probs["original"][:, 0])
    summary: dict = {"variants": list(VARIANTS), "growth": GROWTH, "images": int(len(labels)),
                     "without_mask": int((~with_mask).sum()), "threshold": threshold,
                     "all": _group_summary(labels[with_mask], {k: v[with_mask] for k, v in probs.items()}, threshold,
                                           n_resamples, areas[with_mask])}
    if sources is not None and len(set(sources)) > 1:
        column = np.asarray(sources, dtype=object)
        summary["sources"] = {
            name: _group_summary(labels[with_mask & (column == name)],
                                 {k: v[with_mask & (column == name)] for k, v in probs.items()}, threshold,
                                 n_resamples, areas[with_mask & (column == name)]) for name in dict.fromkeys(sources)}
    per_image = [{"id": ids[i], **({} if sources is None else {"source": str(sources[i])}),
                  "label": label_names[labels[i]],
                  "mask_area": None if not with_mask[i] else round(float(areas[i]), 5),
                  **{f"p_{name.replace(' ', '_')}": None if not with_mask[i] else round(float(probs[name][i, -1]), 5)
                     for name in VARIANTS}} for i in range(len(labels))]
    return OcclusionResult(summary, per_image, examples, titles)


def occlusion_markdown(summary: dict) -> str:
    """The result as a Markdown table: per group, n and the ROC AUC of each variant (erasures with their paired
    difference from the original)."""
    from .report import format_interval, format_number

    def signed(value) -> str:
        return format_number(value) if value is None else f"{value:+.3f}"

    def cell(part: dict, name: str) -> str:
        if name not in part:
            return "–"
        text = f"{format_number(part[name]['roc_auc'])} {format_interval(part[name]['roc_auc_ci95'])}"
        if "minus_original" in part[name]:
            delta = part[name]["minus_original"]
            text += f"; Δ {signed(delta['delta'])} [{', '.join(signed(v) for v in delta['ci95'] or (None, None))}]"
        return text

    groups = [("**all**", summary["all"]), *summary.get("sources", {}).items()]
    rows = [f"| {name} | {part['n']} | {' | '.join(cell(part, v) for v in VARIANTS)} |" for name, part in groups]
    return "\n".join([
        f"| images | n | ROC AUC: {' | '.join(VARIANTS)} |", "|---|---|---|---|---|", *rows, "",
        *([f"The proxy mask's area alone (how large the erased region is) scores ROC AUC "
           f"{format_number(summary['all']['mask_area_roc_auc'])}.", ""] if "mask_area_roc_auc" in summary["all"]
          else []),
        f"{summary['without_mask']} of {summary['images']} images had no proxy lesion mask and are left out. Erased: "
        f"the mask grown by {summary['growth']:.0%} of the side, inpainted from the skin around it (lesion), or "
        "everything else, filled with the skin's median colour (context). Δ: minus the original, paired bootstrap "
        "95 % CI."])


def write_occlusion(out_dir: str | Path, result: OcclusionResult, title: str = "") -> list[str]:
    """`occlusion.json` and, with examples, `occlusion_examples.png` into `out_dir`; returns the names written."""
    from .plots import image_grid_figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / JSON_FILE).write_text(json.dumps({"summary": result.summary, "images": result.per_image}, indent=1)
                                     + "\n")
    written = [JSON_FILE]
    if result.examples:
        figure = image_grid_figure(result.examples, result.example_titles,
                                   "The lesion erased, the context erased" + (f"\n{title}" if title else ""))
        figure.savefig(out_dir / FIGURE_FILE, dpi=110)
        written.append(FIGURE_FILE)
    return written


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m modeling.occlusion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser, default_split="validation")
    args = parser.parse_args(argv)
    out = output_dir(parser, args)
    model, processor, split, labels, ids, sources = evaluation_split(parser, args)
    result = occlusion_test(model, processor, split, labels, ids=ids, limit=args.limit, seed=args.seed,
                            batch_size=args.batch_size, progress=not args.no_progress)
    written = write_occlusion(out, result, f"{Path(args.model_dir).name} on {' + '.join(sources)} ({args.split})")
    print(occlusion_markdown(result.summary))
    print(f"\nwritten: {', '.join(str(out / name) for name in written)}", file=sys.stderr)
    return result.summary


__all__ = ["GROWTH", "VARIANTS", "OcclusionResult", "main", "occlude", "occlusion_markdown", "occlusion_test",
           "write_occlusion"]


if __name__ == "__main__":
    main()
