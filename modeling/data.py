"""Data: a `datasets.DatasetDict` (train / validation / test) from an image folder or a Hub dataset, a seeded
stratified validation split carved from train, a duplicates report, and torchvision v2 transforms."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset
from datasets import Image as ImageFeature
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2

from .image_utils import to_rgb

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SPLIT_NAMES = ("train", "validation", "test")
SPLIT_ALIASES = {"val": "validation", "valid": "validation", "eval": "validation"}


class DataError(ValueError):
    """A data source that cannot be used as given; the message says why and what to do."""


@dataclass
class ImageRecord:
    path: str
    label: str
    split: str
    md5: str
    phash: imagehash.ImageHash


@dataclass
class ScanResult:
    records: list[ImageRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def _read_record(path: Path, label: str, split: str) -> ImageRecord:
    data = path.read_bytes()
    with Image.open(path) as image:
        image.load()  # full decode: catches truncated files that verify() lets through
        phash = imagehash.phash(to_rgb(image))
    return ImageRecord(str(path), label, split, hashlib.md5(data).hexdigest(), phash)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def scan_image_folder(root: str | Path) -> ScanResult:
    """Reads `<root>/<split>/<label>/*` or, when no split folders exist, `<root>/<label>/*` (split "train").
    Unreadable files are skipped, counted and named in the log."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory")
    split_dirs = {SPLIT_ALIASES.get(d.name, d.name): d for d in root.iterdir() if d.is_dir()}
    if not set(split_dirs) & set(SPLIT_NAMES):
        split_dirs = {"train": root}
    unknown = set(split_dirs) - set(SPLIT_NAMES)
    if unknown:
        raise DataError(f"{root}: unknown split folder(s) {sorted(unknown)}; expected some of {SPLIT_NAMES}")
    result = ScanResult()
    for split, split_dir in sorted(split_dirs.items()):
        for label_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            for path in _image_files(label_dir):
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    result.skipped.append((str(path), "not an image file name"))
                    continue
                try:
                    result.records.append(_read_record(path, label_dir.name, split))
                except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
                    result.skipped.append((str(path), f"unreadable image: {error}"))
    for path, reason in result.skipped:
        logger.warning("skipped %s (%s)", path, reason)
    if result.skipped:
        logger.warning("skipped %d file(s) in %s", len(result.skipped), root)
    if not result.records:
        raise DataError(f"{root}: no readable images found (expected <split>/<label>/*.jpg or <label>/*.jpg)")
    return result


def _check_labels(records: Sequence[ImageRecord]) -> list[str]:
    by_split: dict[str, set[str]] = {}
    for record in records:
        by_split.setdefault(record.split, set()).add(record.label)
    labels = sorted(set().union(*by_split.values()))
    if len(labels) < 2:
        raise DataError(f"found a single class {labels}: a classifier needs at least two label folders")
    for split, found in by_split.items():
        if found != set(labels):
            raise DataError(f"split {split!r} has labels {sorted(found)} but the data has {labels}; "
                            "every split needs the same label folders")
    return labels


def _hash_distances(records: Sequence[ImageRecord]) -> np.ndarray:
    bits = np.array([int(str(r.phash), 16) for r in records], dtype=np.uint64)
    return np.bitwise_count(bits[:, None] ^ bits[None, :])


def find_duplicates(records: Sequence[ImageRecord], max_distance: int = 2) -> dict:
    """Exact (same bytes) and near (perceptual-hash Hamming distance <= max_distance of 64 bits) duplicate pairs,
    within and across splits."""
    distances = _hash_distances(records)
    md5 = np.array([r.md5 for r in records])
    pairs: dict[str, list[dict]] = {"exact": [], "near": []}
    for i, j in zip(*np.nonzero(np.triu(distances <= max_distance, k=1)), strict=True):
        a, b = records[i], records[j]
        kind = "exact" if md5[i] == md5[j] else "near"
        pairs[kind].append({"a": a.path, "b": b.path, "splits": sorted({a.split, b.split}),
                            "labels": sorted({a.label, b.label}), "distance": int(distances[i, j])})
    summary = {kind: {"within_split": sum(len(p["splits"]) == 1 for p in found),
                      "cross_split": sum(len(p["splits"]) == 2 for p in found)} for kind, found in pairs.items()}
    return {"max_distance": max_distance, "summary": summary, **pairs}


def drop_duplicates(records: list[ImageRecord], max_distance: int = 2) -> tuple[list[ImageRecord], list[str]]:
    """Keeps the first of byte-identical images within train and within validation, and drops train images that
    are exact or near duplicates of validation/test images (so evaluation never sees a training image again).
    Test is never changed."""
    distances = _hash_distances(records)
    held_out = np.array([r.split != "train" for r in records])
    seen: set[tuple[str, str]] = set()
    kept, dropped = [], []
    for i, record in enumerate(records):
        key = (record.split, record.md5)
        leak = record.split == "train" and bool((distances[i][held_out] <= max_distance).any())
        if (key in seen and record.split != "test") or leak:
            dropped.append(record.path)
        else:
            seen.add(key)
            kept.append(record)
    return kept, dropped


def _records_to_dataset(records: Sequence[ImageRecord], labels: list[str]) -> Dataset:
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=labels), "path": Value("string")})
    return Dataset.from_dict(
        {"image": [r.path for r in records], "label": [labels.index(r.label) for r in records],
         "path": [r.path for r in records]},
        features=features,
    )


def carve_validation(dataset_dict: DatasetDict, fraction: float, seed: int) -> DatasetDict:
    """A stratified, seeded validation split carved from train, unless one already exists. Test is untouched."""
    if "validation" in dataset_dict or fraction <= 0:
        return dataset_dict
    if not 0 < fraction < 1:
        raise DataError(f"validation_fraction must be in (0, 1), got {fraction}")
    parts = dataset_dict["train"].train_test_split(test_size=fraction, seed=seed, stratify_by_column="label")
    return DatasetDict({**dataset_dict, "train": parts["train"], "validation": parts["test"]})


@dataclass
class PreparedData:
    dataset: DatasetDict
    labels: list[str]
    duplicates: dict
    skipped: list[tuple[str, str]]
    dropped_duplicates: list[str]


def build_dataset_dict(
    source: str | Path,
    validation_fraction: float = 0.15,
    seed: int = 42,
    drop_cross_split_duplicates: bool = False,
    near_duplicate_distance: int = 2,
    image_column: str = "image",
    label_column: str = "label",
    carve_test_fraction: float = 0.0,
) -> PreparedData:
    """The data set from an image folder (`<split>/<label>/*` or `<label>/*`) or a Hub dataset id.
    A folder without splits becomes train (and test, when `carve_test_fraction` > 0); validation is then carved
    from train. Duplicates are reported; with `drop_cross_split_duplicates` train copies of held-out images go."""
    path = Path(source)
    records: list[ImageRecord] = []
    skipped: list[tuple[str, str]] = []
    if path.exists():
        scan = scan_image_folder(path)
        records, skipped = scan.records, scan.skipped
        labels = _check_labels(records)
        splits = sorted({r.split for r in records}, key=SPLIT_NAMES.index)
        dataset = DatasetDict({s: _records_to_dataset([r for r in records if r.split == s], labels) for s in splits})
    else:
        dataset, labels = _load_hub_dataset(str(source), image_column, label_column)
    if "test" not in dataset and carve_test_fraction > 0:
        parts = dataset["train"].train_test_split(test_size=carve_test_fraction, seed=seed, stratify_by_column="label")
        dataset = DatasetDict({**dataset, "train": parts["train"], "test": parts["test"]})
    if "train" in dataset:
        dataset = carve_validation(dataset, validation_fraction, seed)
    duplicates: dict = {}
    dropped: list[str] = []
    if records:  # duplicates are judged on the final splits
        split_of = {p: name for name, part in dataset.items() for p in part["path"]}
        for record in records:
            record.split = split_of[record.path]
        if drop_cross_split_duplicates:
            records, dropped = drop_duplicates(records, near_duplicate_distance)
            gone = set(dropped)
            dataset = DatasetDict({name: part.filter(lambda p: p not in gone, input_columns="path")
                                   for name, part in dataset.items()})
            logger.info("dropped %d duplicate image(s) from train/validation", len(dropped))
        duplicates = find_duplicates(records, near_duplicate_distance)
    return PreparedData(dataset, labels, duplicates, skipped, dropped)


def _load_hub_dataset(dataset_id: str, image_column: str, label_column: str) -> tuple[DatasetDict, list[str]]:
    try:
        dataset = load_dataset(dataset_id)
    except Exception as error:  # datasets raises many types for a missing/offline id
        raise DataError(f"could not load {dataset_id!r} as a folder or Hub dataset: {error}") from error
    dataset = DatasetDict({SPLIT_ALIASES.get(k, k): v for k, v in dataset.items()})
    train = dataset.get("train", next(iter(dataset.values())))
    for column in (image_column, label_column):
        if column not in train.column_names:
            raise DataError(f"{dataset_id}: no column {column!r}; columns are {train.column_names}")
    dataset = dataset.rename_columns({image_column: "image", label_column: "label"}) if (
        image_column, label_column) != ("image", "label") else dataset
    if not isinstance(train.features[label_column], ClassLabel):
        dataset = dataset.class_encode_column("label")
    labels = dataset[next(iter(dataset))].features["label"].names
    return dataset, labels


def build_transforms(image_size: int, mean: Sequence[float], std: Sequence[float], train: bool,
                     strength: float = 1.0) -> v2.Compose:
    """Eval: resize the short side + centre crop (what the image processor does). Train: random resized crop,
    flips, rotation and colour jitter scaled by `strength` (0 = the eval transform)."""
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    if not train or strength <= 0:
        return v2.Compose([v2.Resize(image_size), v2.CenterCrop(image_size), *tail])
    s = min(strength, 2.0)
    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=(max(0.08, 1 - 0.65 * s), 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),  # dermoscopy has no canonical orientation
        v2.RandomRotation(degrees=30 * s),
        v2.ColorJitter(brightness=0.2 * s, contrast=0.2 * s, saturation=0.2 * s, hue=0.02 * s),
        *tail,
    ])


def make_transform_fn(transform: Callable) -> Callable[[dict], dict]:
    """For `Dataset.set_transform`: a batch of PIL images + labels -> pixel_values + labels."""

    def apply(batch: dict) -> dict:
        batch["pixel_values"] = [transform(to_rgb(image)) for image in batch["image"]]
        return batch

    return apply


def collate_fn(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stacks transformed examples into the model's inputs."""
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["label"] for e in examples], dtype=torch.long),
    }
