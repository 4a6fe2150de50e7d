"""Training-set sampling that stops a grouping of the images (the source, the acquisition) from predicting the label.

In the ISIC archive the acquisition shows in the image (a square BCN-style dermoscope field, a 4:3 HAM10000-style
photo) and differs in base rate: isic2019-part's square images are 62 % malignant, its 4:3 ones 24 %. A model can
learn that shortcut instead of the lesion. Kamiran & Calders' *reweighing* (Knowledge and Information Systems 33,
2012) samples each image with weight P(group) P(label) / P(group, label): in the sampled training distribution the
label is independent of the group, while the group sizes and the overall label mix stay what they were.

Groups are combinations of columns of the training split (`source`, `label`, any column of a Hub dataset) or
`shape`, the image's aspect ratio class (`shape_name`), read from the file header.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import WeightedRandomSampler
from transformers import Trainer

SHAPES = {"1:1": 1.0, "4:3": 4 / 3, "3:2": 3 / 2}
SHAPE_TOLERANCE = 0.03  # the relative distance to a named ratio within which an image takes that name
DERIVED_COLUMNS = ("shape",)


def shape_name(width: int, height: int) -> str:
    """The nearest of SHAPES to the aspect ratio (long side over short side) within 3 %, else "other"."""
    ratio = max(width, height) / min(width, height)
    name, target = min(SHAPES.items(), key=lambda item: abs(item[1] - ratio))
    return name if abs(target - ratio) / target < SHAPE_TOLERANCE else "other"


def image_shape(image: str | Path | dict | Image.Image) -> str:
    """`shape_name` of an image given as a path, a datasets `{"bytes", "path"}` cell (undecoded) or a PIL image;
    only the header is read."""
    if isinstance(image, Image.Image):
        return shape_name(*image.size)
    if isinstance(image, dict):
        image = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
    with Image.open(image) as opened:
        return shape_name(*opened.size)


def image_shapes(dataset) -> list[str]:
    """`image_shape` of every row of a datasets split, without decoding the pixels."""
    from datasets import Image as ImageFeature

    rows = dataset.with_format(None)
    if "path" in rows.column_names and all(rows["path"]):
        try:
            return [image_shape(path) for path in rows["path"]]
        except FileNotFoundError:  # a Hub dataset's synthetic ids: read the embedded bytes instead
            pass
    return [image_shape(cell) for cell in rows.cast_column("image", ImageFeature(decode=False))["image"]]


def group_keys(dataset, columns: Sequence[str]) -> list[tuple]:
    """Each row's group: the tuple of its values in `columns` (`shape` is derived from the image)."""
    rows = dataset.with_format(None)
    missing = [c for c in columns if c not in rows.column_names and c not in DERIVED_COLUMNS]
    if missing:
        raise ValueError(f"no column {missing} to group by; the training split has {rows.column_names} "
                         f"(and the derived {list(DERIVED_COLUMNS)})")
    values = [image_shapes(rows) if c == "shape" and "shape" not in rows.column_names else rows[c] for c in columns]
    return list(zip(*values, strict=True)) if values else [() for _ in range(len(rows))]


def reweighing_weights(groups: Sequence[tuple], labels: Sequence[int]) -> np.ndarray:
    """P(group) P(label) / P(group, label) per row (Kamiran & Calders 2012): the label independent of the group."""
    n = len(labels)
    group_counts, label_counts = Counter(groups), Counter(labels)
    joint = Counter(zip(groups, labels, strict=True))
    return np.array([group_counts[g] * label_counts[y] / (n * joint[g, y]) for g, y in zip(groups, labels,
                                                                                          strict=True)])


def reweighing_summary(groups: Sequence[tuple], labels: Sequence[int], weights: np.ndarray,
                       label_names: Sequence[str]) -> list[dict]:
    """Per group: its images, its share of the training split, and the share of each label before and after."""
    groups_array = np.array([" / ".join(map(str, g)) for g in groups])
    labels_array = np.asarray(labels)
    rows = []
    for name in sorted(set(groups_array.tolist())):
        index = groups_array == name
        row = {"group": name, "images": int(index.sum()), "share": round(float(index.mean()), 4)}
        for k, label in enumerate(label_names):
            row[f"{label}_share_before"] = round(float((labels_array[index] == k).mean()), 4)
            row[f"{label}_share_after"] = round(float(weights[index & (labels_array == k)].sum()
                                                      / weights[index].sum()), 4)
        rows.append(row)
    return rows


class ReweighedTrainer(Trainer):
    """A Trainer whose training batches are drawn with replacement by per-row weights (one epoch = as many draws
    as the split has rows), seeded by the run's seed; evaluation and prediction are untouched."""

    def __init__(self, *args, sample_weights: np.ndarray, **kwargs):
        super().__init__(*args, **kwargs)
        if len(sample_weights) != len(self.train_dataset):
            raise ValueError(f"{len(sample_weights)} sample weights for {len(self.train_dataset)} training rows")
        self.sample_weights = torch.as_tensor(sample_weights, dtype=torch.double)

    def _get_train_sampler(self, train_dataset=None):
        generator = torch.Generator().manual_seed(self.args.seed)
        return WeightedRandomSampler(self.sample_weights, num_samples=len(self.sample_weights), replacement=True,
                                     generator=generator)
