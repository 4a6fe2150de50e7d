"""Where a model's validation ROC AUC comes from within a source: the ORIGINAL validation images grouped by their
shape, which in the ISIC archive tells the acquisition apart (isic2019-part's README: 600x450 HAM10000-style images,
1024x1024 BCN-style ones, large 3:2 photographs; re-encoded with the aspect kept), each group's size, malignant
share, ROC AUC with a 95 % bootstrap interval, the median p(malignant) of its benign and of its malignant images, and
how many images of that shape the two-source training split holds (what the two-source models trained on; a model
trained on one source saw only that source's).

    python recipes/validation_by_image_shape.py checkpoints/asff-lite2-isic --out results/by-image-shape/lite2.json

Validation only (the splits of `train_hf.py --dataset isic2020-part isic2019-part --drop_duplicates true
--near_duplicate_distance 4`); the test split is never read."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling.metrics.statistics import bootstrap_ci  # noqa: E402
from modeling.sampling import image_shape  # noqa: E402  (the one home of the shape classes)
from modeling.selection import validation_scores, validation_set  # noqa: E402
from modeling.training import DataArguments, prepare_data  # noqa: E402

SOURCES = ["../shared/data/isic2020-part", "../shared/data/isic2019-part"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--dataset", nargs="+", default=SOURCES)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    data = validation_set(args.dataset)
    probs, _ = validation_scores(args.model, data)
    shapes = np.array([image_shape(p) for p in data.paths])
    train = prepare_data(DataArguments(dataset=list(args.dataset), drop_duplicates=True, near_duplicate_distance=4),
                         seed=42).dataset["train"].with_format(None)
    train_shapes = Counter(zip(train["source"], (image_shape(p) for p in train["path"]), strict=True))
    rows = []
    for source in sorted(set(data.sources.tolist())):
        for shape in sorted(set(shapes[data.sources == source].tolist())):
            index = (data.sources == source) & (shapes == shape)
            labels, p = data.labels[index], probs[index]
            # The median score of each class: a group whose benign images score high is one the model reads as
            # malignant-looking as a whole (e.g. from how it was photographed), not lesion by lesion.
            medians = {f"median_p_{name}": float(np.median(p[labels == value])) if (labels == value).any() else None
                       for name, value in (("benign", 0), ("malignant", 1))}
            row = {"source": source, "shape": shape, "n": int(index.sum()), "malignant": int(labels.sum()),
                   "train_images": train_shapes.get((source, shape), 0), "roc_auc": None, "ci95": None, **medians}
            if 0 < labels.sum() < len(labels):
                row["roc_auc"] = float(roc_auc_score(labels, p))
                interval = bootstrap_ci(labels, np.stack([1 - p, p], 1), n_resamples=2000)["roc_auc"]
                # NaN: some resample of a small group held one class only
                row["ci95"] = None if np.isnan(interval).any() else list(interval)
            rows.append(row)
            auc = "n/a" if row["roc_auc"] is None else f"{row['roc_auc']:.3f}"
            if row["ci95"] is not None:
                auc += f" [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]"
            print(f"| {source} | {shape} | {row['n']} | {row['malignant'] / row['n']:.2f} | {row['train_images']} | "
                  f"{auc} | {' / '.join('n/a' if m is None else f'{m:.2f}' for m in medians.values())} |", flush=True)
    result = {"model": str(args.model), "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
