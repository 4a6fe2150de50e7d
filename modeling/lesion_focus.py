"""Lesion focus, measured: the CAM frame share of a model on a data set. For each image, the share of its Grad-CAM
mass (fused map, the image's TRUE class, the raw map before any min-max scaling: `explain.raw_grad_cams`) in the
outer 1/8 of each side of the model's input (`explain.cam_frame_share`; 43.75 % of the area, so a uniform map scores
0.4375). Lower is better: dermoscopy centres the lesion, so a model reading the lesion keeps its CAM off the frame.

    python -m modeling.lesion_focus MODEL_DIR --dataset FOLDER [FOLDER2 ...] [--split test] [--limit N]
        [--output_dir DIR]

writes `cam_frame_share.json` (summary: mean with a bootstrap 95 % CI, median, share of images above uniform, n, the
count of all-zero CAMs, which are left out; per source and pooled; and every image's value) and
`cam_frame_share_worst.png` (the 8 images with the highest share) into DIR (default MODEL_DIR/report). The report
written after training (`training.train_one`, `evaluate_only`) includes the same, on the test split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .decision import calibrated_probabilities, temperature
from .explain import _denormalise, cam_frame_share, raw_grad_cams
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
) -> FrameShareResult:
    """The CAM frame share of every image (or of a seeded sample of `limit`, stratified by source and label), each
    for its true class (`labels`: the model's class ids), summarised pooled and, with several `sources`, per source.
    `images`: image sources, or a `datasets.Dataset` split with `image` and `label` (and `path`, `source`) columns,
    decoded a batch at a time. Keeps the `worst` images (highest share) for the figure."""
    if hasattr(images, "column_names"):  # a Dataset split: its labels, sources, ids; no training transform
        images = images.with_format(None)
        labels = images["label"] if labels is None else labels
        sources = images["source"] if sources is None and "source" in images.column_names else sources
        ids = images["path"] if ids is None and "path" in images.column_names else ids
    if labels is None:
        raise ValueError("frame_shares needs the true labels (the CAM explains each image's true class)")
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
    label_names = [str(model.config.id2label[k]) for k in sorted(model.config.id2label)]
    if len(labels) and (labels.min() < 0 or labels.max() >= len(label_names)):
        raise ValueError(f"labels must be the model's class ids 0..{len(label_names) - 1}")
    start_time = time.perf_counter()
    shares = np.full(len(labels), np.nan)
    probs = np.zeros((len(labels), len(label_names)), dtype=np.float32)
    kept: list[WorstImage] = []
    size = None
    with tqdm(total=len(labels), desc="CAM frame share", unit="img", disable=not progress) as bar:
        for start in range(0, len(labels), batch_size):
            stop = min(start + batch_size, len(labels))
            inputs = processor(images=_batches(images, start, stop), return_tensors="pt")["pixel_values"].float()
            cams, logits = raw_grad_cams(model, inputs, labels[start:stop], target)
            size = cams.shape[1:]
            probs[start:stop] = calibrated_probabilities(logits, temperature(model.config)).numpy()
            for offset, cam in enumerate(cams):
                shares[start + offset] = cam_frame_share(cam, FRAME)
            order = [i for i in np.argsort(-np.nan_to_num(shares[start:stop], nan=-1.0), kind="stable")[:worst]
                     if not np.isnan(shares[start + i])]
            kept += [WorstImage(float(shares[start + i]), start + i,
                                (_denormalise(processor, inputs[i:i + 1]) * 255).round().astype(np.uint8), cams[i])
                     for i in order]
            kept = sorted(kept, key=lambda w: (-w.share, w.index))[:worst]
            bar.update(stop - start)
    binary = len(label_names) == 2
    # p: calibrated p(class 1) for two classes (the decision's probability), else p(true class).
    p = probs[:, 1] if binary else probs[np.arange(len(labels)), labels]
    summary = {
        "definition": DEFINITION,
        "target": target,
        "method": "gradcam",
        "cam_class": "true label",
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
        "seconds": round(time.perf_counter() - start_time, 1),
    }
    if sources is not None and len(set(sources)) > 1:
        column = np.asarray(sources, dtype=object)
        summary["sources"] = {name: summarise(shares[column == name], labels[column == name], label_names,
                                              n_resamples) for name in dict.fromkeys(sources)}
    per_image = [{"id": ids[i], **({} if sources is None else {"source": str(sources[i])}),
                  "label": label_names[labels[i]],
                  "frame_share": None if np.isnan(shares[i]) else round(float(shares[i]), 5),
                  "p": round(float(p[i]), 5)} for i in range(len(labels))]
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
            + (f"\n{title}" if title else ""))
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m modeling.lesion_focus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a saved model (directory or Hub id)")
    parser.add_argument("--dataset", nargs="+", required=True,
                        help="one or more image folders (<split>/<label>/* or <label>/*) or Hub dataset ids")
    parser.add_argument("--split", default="test", choices=["test", "validation", "train"],
                        help="test: each source's test split, or all of a source without one (default); "
                             "validation/train: carved as train_hf.py does (--validation_fraction, --split_seed)")
    parser.add_argument("--validation_fraction", type=float, default=0.15)
    parser.add_argument("--split_seed", type=int, default=42)
    parser.add_argument("--limit", type=int, help="a seeded sample of this many images, stratified by source and "
                                                   "label (default: all)")
    parser.add_argument("--seed", type=int, default=SAMPLE_SEED, help="seed of the --limit sample")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--target", default="fused", help="CAM target layer: fused, stage4 or stage3")
    parser.add_argument("--output_dir", type=Path, help="default: MODEL_DIR/report")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    output_dir = args.output_dir
    if output_dir is None:
        if not Path(args.model_dir).is_dir():
            parser.error("give --output_dir for a model that is not a local directory")
        output_dir = Path(args.model_dir) / "report"

    from .data import DataError, build_dataset_dict
    from .inference import load_classifier
    from .report import frame_share_markdown
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
    model_labels = [str(model.config.id2label[k]) for k in sorted(model.config.id2label)]
    if set(prepared.labels) != set(model_labels):
        parser.exit(2, f"error: the data's labels {prepared.labels} do not match the model's {model_labels}\n")
    split = prepared.dataset[args.split].with_format(None)
    # The data's label ids in the model's order (same names, maybe another order).
    to_model = [model_labels.index(name) for name in prepared.labels]
    labels = [to_model[k] for k in split["label"]]
    result = frame_shares(model, processor, split, labels, ids=sample_ids(split, prepared.source_roots),
                          limit=args.limit, seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress,
                          target=args.target)
    title = f"{Path(args.model_dir).name} on {' + '.join(prepared.sources)} ({args.split})"
    write_frame_share(output_dir, result, title)
    print(frame_share_markdown(result.summary, None))
    print(f"\nwritten: {output_dir / JSON_FILE}" + (f", {output_dir / FIGURE_FILE}" if result.worst else ""),
          file=sys.stderr)
    return result.summary


__all__ = [
    "FRAME",
    "FrameShareResult",
    "UNIFORM_FRAME_SHARE",
    "frame_shares",
    "main",
    "report_frame_share",
    "stratified_sample",
    "summarise",
    "write_frame_share",
]


if __name__ == "__main__":
    main()
