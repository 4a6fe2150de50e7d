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
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, concatenate_datasets, load_dataset
from datasets import Image as ImageFeature
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors
from torchvision.transforms import v2

from .image_processing_asff_resnet import fit_to_square, shades_of_gray
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
    source: str = ""


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
    within and across splits (and, with several sources, how many pairs join two sources)."""
    distances = _hash_distances(records)
    md5 = np.array([r.md5 for r in records])
    pairs: dict[str, list[dict]] = {"exact": [], "near": []}
    for i, j in zip(*np.nonzero(np.triu(distances <= max_distance, k=1)), strict=True):
        a, b = records[i], records[j]
        kind = "exact" if md5[i] == md5[j] else "near"
        pairs[kind].append({"a": a.path, "b": b.path, "splits": sorted({a.split, b.split}),
                            "labels": sorted({a.label, b.label}), "distance": int(distances[i, j]),
                            "sources": sorted({a.source, b.source})})
    summary = {kind: {"within_split": sum(len(p["splits"]) == 1 for p in found),
                      "cross_split": sum(len(p["splits"]) == 2 for p in found)} for kind, found in pairs.items()}
    if len({r.source for r in records}) > 1:
        for kind, found in pairs.items():
            summary[kind]["cross_source"] = sum(len(p["sources"]) == 2 for p in found)
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
    parts = stratified_split(dataset_dict["train"], fraction, seed, "validation")
    return DatasetDict({**dataset_dict, "train": parts["train"], "validation": parts["test"]})


def stratified_split(dataset: Dataset, fraction: float, seed: int, name: str) -> DatasetDict:
    """A seeded split stratified by label; too few images of a class for it is a DataError (a user error)."""
    try:
        return dataset.train_test_split(test_size=fraction, seed=seed, stratify_by_column="label")
    except ValueError as error:  # e.g. "The test_size = 1 should be greater or equal to the number of classes = 2"
        raise DataError(f"cannot carve a stratified {name} split ({fraction:g}) from {len(dataset)} train images: "
                        f"{error}") from error


@dataclass
class PreparedData:
    dataset: DatasetDict
    labels: list[str]
    duplicates: dict
    skipped: list[tuple[str, str]]
    dropped_duplicates: list[str]
    sources: list[str] = field(default_factory=list)  # names, in the order given (the `source` column's values)
    source_roots: dict[str, str] = field(default_factory=dict)  # name -> the folder or Hub id as given
    whole_sources: list[str] = field(default_factory=list)  # evaluation only: sources without a test split, all used

    def source_indices(self, split: str) -> dict[str, np.ndarray]:
        """Row indices of each source within a split (sources without rows in it are left out)."""
        part = self.dataset[split]
        if "source" not in part.column_names:
            return {self.sources[0] if self.sources else "": np.arange(len(part))}
        column = np.asarray(part.with_format(None)["source"])
        return {name: np.flatnonzero(column == name) for name in self.sources if (column == name).any()}


def source_list(source: str | Path | Sequence[str | Path]) -> list[str]:
    """`--dataset` as a list: one source (a string) or several."""
    if isinstance(source, str | Path):
        return [str(source)]
    sources = [str(s) for s in source]
    if not sources:
        raise DataError("no data source given (an image folder or a Hub dataset id)")
    return sources


def source_names(sources: Sequence[str | Path]) -> list[str]:
    """How reports name each source: a folder by its name, a Hub dataset by its id; the path as given where two
    folders share a name."""
    sources = [str(s) for s in sources]
    if len(set(sources)) < len(sources):
        raise DataError(f"a data source is given twice: {sources}")
    names = [Path(s).resolve().name if Path(s).exists() else s for s in sources]
    return [name if names.count(name) == 1 else source for name, source in zip(names, sources, strict=True)]


@dataclass
class _Source:
    name: str
    dataset: DatasetDict
    labels: list[str]
    records: list[ImageRecord]
    skipped: list[tuple[str, str]]
    whole: bool = False  # evaluation only: no test split, so all of it stands in for one


def _load_source(source: str, name: str, image_column: str, label_column: str) -> _Source:
    """One source as found: a folder's splits (its label set checked) or a Hub dataset's."""
    path = Path(source)
    records: list[ImageRecord] = []
    skipped: list[tuple[str, str]] = []
    if path.exists():
        scan = scan_image_folder(path)
        records, skipped = scan.records, scan.skipped
        for record in records:
            record.source = name
        labels = _check_labels(records)
        splits = sorted({r.split for r in records}, key=SPLIT_NAMES.index)
        dataset = DatasetDict({s: _records_to_dataset([r for r in records if r.split == s], labels) for s in splits})
    else:
        dataset, labels = _load_hub_dataset(source, image_column, label_column)
    return _Source(name, dataset, labels, records, skipped)


def _split_source(part: _Source, validation_fraction: float, seed: int, carve_test_fraction: float,
                  evaluation_only: bool) -> _Source:
    """One source's splits: its own test split kept as it is, test carved only with `carve_test_fraction`,
    validation carved from train (stratified, seeded). `evaluation_only`: its test split, or all of it."""
    dataset, records, name = part.dataset, part.records, part.name
    whole = evaluation_only and "test" not in dataset
    if evaluation_only:
        if whole:  # no test split: evaluate on all of it (the caller says so)
            dataset = DatasetDict({"test": concatenate_datasets(list(dataset.values()))})
        dataset = DatasetDict({"test": dataset["test"]})
    else:
        if "test" not in dataset and carve_test_fraction > 0:
            parts = stratified_split(dataset["train"], carve_test_fraction, seed, "test")
            dataset = DatasetDict({**dataset, "train": parts["train"], "test": parts["test"]})
        if "train" in dataset:
            dataset = carve_validation(dataset, validation_fraction, seed)
    if records:  # each record's final split, for the duplicates
        split_of = {p: split for split, rows in dataset.items() for p in rows["path"]}
        records = [r for r in records if r.path in split_of]
        for record in records:
            record.split = split_of[record.path]
    dataset = DatasetDict({split: rows.add_column("source", [name] * len(rows)) for split, rows in dataset.items()})
    return _Source(name, dataset, part.labels, records, part.skipped, whole)


def _same_labels(first: _Source, other: _Source, first_root: str, other_root: str) -> _Source:
    """`other` with its label ids in `first`'s order; a clear error when the label sets differ."""
    if set(other.labels) != set(first.labels):
        raise DataError(f"the sources have different label sets: {first.name} ({first_root}) has {first.labels}, "
                        f"{other.name} ({other_root}) has {other.labels}; every source needs the same labels "
                        "(rename the label folders, or map the labels, so that they agree)")
    return _in_label_order(other, first.labels)


def _relabelled(dataset: DatasetDict, old: list[str], new: list[str]) -> DatasetDict:
    """`dataset` with label ids in the order `new` (the same names as `old`): each image keeps its label's name
    (a plain cast of the ClassLabel would keep the ids and rename them)."""
    to_new = [new.index(label) for label in old]
    target = ClassLabel(names=new)
    return DatasetDict({
        split: part.map(lambda label: {"label": to_new[label]}, input_columns="label").cast_column("label", target)
        for split, part in dataset.items()})


def _in_label_order(source: _Source, labels: list[str]) -> _Source:
    """`source` with its label ids in the order of `labels` (the same set)."""
    if source.labels != labels:
        source.dataset = _relabelled(source.dataset, source.labels, labels)
        source.labels = list(labels)
    return source


def in_model_label_order(prepared: PreparedData, model_labels: list[str]) -> PreparedData:
    """`prepared` with its label ids in a model's order (its id2label), for scoring the model on it: the same names
    in another order (a model trained with --positive_label) are re-indexed by name; other names are a DataError."""
    model_labels = [str(label) for label in model_labels]
    if set(prepared.labels) != set(model_labels):
        raise DataError(f"the data's labels {prepared.labels} do not match the model's {model_labels}: name the "
                        "label folders as the model's classes (or fine-tune the model on these labels instead)")
    if prepared.labels != model_labels:
        prepared.dataset = _relabelled(prepared.dataset, prepared.labels, model_labels)
        prepared.labels = model_labels
    return prepared


def positive_last(labels: list[str], positive_label: str | None) -> list[str]:
    """The label order with `positive_label` last: class 1 of a two-class model, whose probability the decision
    threshold, recall and ROC AUC are about (without it, the label that sorts last)."""
    if positive_label is None:
        return list(labels)
    if positive_label not in labels:
        raise DataError(f"--positive_label {positive_label!r} is not one of the data's labels {labels}")
    return [label for label in labels if label != positive_label] + [positive_label]


def _merge_sources(parts: list[_Source]) -> DatasetDict:
    """Per split, the sources' rows one after the other (columns image, label, path, source)."""
    if len(parts) == 1:
        return parts[0].dataset
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=parts[0].labels),
                         "path": Value("string"), "source": Value("string")})
    merged = {}
    for split in SPLIT_NAMES:
        pieces = []
        for part in parts:
            if split not in part.dataset:
                continue
            piece = part.dataset[split]
            if "path" not in piece.column_names:  # a Hub dataset: stable ids for the predictions
                piece = piece.add_column("path", [f"{part.name}/{split}/{i}" for i in range(len(piece))])
            piece = piece.select_columns(list(features))
            if piece.features != features:
                piece = piece.cast(features)
            pieces.append(piece)
        if pieces:
            merged[split] = concatenate_datasets(pieces)
    return DatasetDict(merged)


def build_dataset_dict(
    source: str | Path | Sequence[str | Path],
    validation_fraction: float = 0.15,
    seed: int = 42,
    drop_cross_split_duplicates: bool = False,
    near_duplicate_distance: int = 2,
    image_column: str = "image",
    label_column: str = "label",
    carve_test_fraction: float = 0.0,
    evaluation_only: bool = False,
    positive_label: str | None = None,
) -> PreparedData:
    """The data set from one or several sources: image folders (`<split>/<label>/*` or `<label>/*`) or Hub dataset
    ids. Per source: its test split is kept untouched; a source without one becomes train (and test, when
    `carve_test_fraction` > 0); validation is carved from each source's train (stratified, seeded). The splits
    hold every source's rows with a `source` column (the folder's name or the Hub id; `PreparedData.sources`).
    The label sets must agree across sources. Duplicates (folders) are judged within and across sources; with
    `drop_cross_split_duplicates` train copies of any validation/test image go. `evaluation_only`: each source's
    test split, or all of a source without one, as "test". The labels are sorted, `positive_label` (if given) last."""
    roots = source_list(source)
    names = source_names(roots)
    parts = [_load_source(root, name, image_column, label_column) for root, name in zip(roots, names, strict=True)]
    for part, root in zip(parts[1:], roots[1:], strict=True):  # before any split: the label sets must agree
        _same_labels(parts[0], part, roots[0], root)
    order = positive_last(parts[0].labels, positive_label)
    parts = [_in_label_order(part, order) for part in parts]
    parts = [_split_source(part, validation_fraction, seed, carve_test_fraction, evaluation_only) for part in parts]
    labels = parts[0].labels
    dataset = _merge_sources(parts)
    records = [r for part in parts for r in part.records]
    skipped = [s for part in parts for s in part.skipped]
    duplicates: dict = {}
    dropped: list[str] = []
    if records:  # duplicates are judged on the final splits, across all folder sources
        if drop_cross_split_duplicates:
            records, dropped = drop_duplicates(records, near_duplicate_distance)
            gone = set(dropped)
            dataset = DatasetDict({name: part.filter(lambda p: p not in gone, input_columns="path")
                                   for name, part in dataset.items()})
            logger.info("dropped %d duplicate image(s) from train/validation", len(dropped))
        duplicates = find_duplicates(records, near_duplicate_distance)
    return PreparedData(dataset, labels, duplicates, skipped, dropped, names, dict(zip(names, roots, strict=True)),
                        [part.name for part in parts if part.whole])


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


AUGMENTATIONS = ("standard", "dermoscopy")


def _plain(image: torch.Tensor) -> torch.Tensor:
    return image.as_subclass(torch.Tensor) if isinstance(image, tv_tensors.TVTensor) else image


def _like(output: torch.Tensor, image):
    return tv_tensors.wrap(output, like=image) if isinstance(image, tv_tensors.TVTensor) else output


class _PixelTransform(v2.Transform):
    """A transform of the image's pixel values only (`transform_pixels`): a lesion mask (`tv_tensors.Mask`, which
    training with `lesion_focus_loss_coefficient` passes along) goes through unchanged."""

    _transformed_types = (torch.Tensor,)

    def transform(self, inpt, params):
        return inpt if isinstance(inpt, tv_tensors.Mask) else self.transform_pixels(inpt)

    def transform_pixels(self, inpt):
        raise NotImplementedError


def _interpolation_for(inpt, interpolation: v2.InterpolationMode) -> v2.InterpolationMode:
    """Masks are resized with nearest neighbours: they stay masks."""
    return v2.InterpolationMode.NEAREST if isinstance(inpt, tv_tensors.Mask) else interpolation


class ShadesOfGray(_PixelTransform):
    """Shades-of-Gray colour constancy on a uint8 image tensor: the processor's own function
    (`image_processing_asff_resnet.shades_of_gray`), so training sees the colours inference sees."""

    def __init__(self, power: float = 6.0):
        super().__init__()
        self.power = power

    def transform_pixels(self, inpt):
        return _like(shades_of_gray(_plain(inpt), self.power), inpt)


class FitToSquare(v2.Transform):
    """The processor's resize to the square input (`image_processing_asff_resnet.fit_to_square`)."""

    _transformed_types = (torch.Tensor,)

    def __init__(self, size: int, mode: str = "crop",
                 interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR):
        super().__init__()
        self.size, self.mode, self.interpolation = size, mode, interpolation

    def transform(self, inpt, params):
        interpolation = _interpolation_for(inpt, self.interpolation)
        return _like(fit_to_square(_plain(inpt), self.size, self.mode, interpolation), inpt)


class SquashToSquare(v2.Transform):
    """Training side of `resize_mode="squash"`: the whole image to a square of its shorter side (the aspect change
    the processor applies, without upsampling), before the random crops."""

    _transformed_types = (torch.Tensor,)

    def __init__(self, interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR):
        super().__init__()
        self.interpolation = interpolation

    def transform(self, inpt, params):
        side = min(inpt.shape[-2:])
        return _like(fit_to_square(_plain(inpt), side, "squash", _interpolation_for(inpt, self.interpolation)), inpt)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


class DermoscopeFrame(_PixelTransform):
    """The dermoscope's field stop: with probability `p`, everything outside a circle (radius `radius` x the image
    side, centre jittered by up to `shift` x the side) turns dark (grey level 0-`max_level`), with a soft edge.
    Large radii leave only dark corners (a vignette). uint8 image tensors (C, H, W); torch's RNG (seedable)."""

    def __init__(self, p: float = 0.5, radius: tuple[float, float] = (0.35, 0.72), shift: float = 0.05,
                 max_level: int = 40):
        super().__init__()
        self.p, self.radius, self.shift, self.max_level = p, radius, shift, max_level

    def transform_pixels(self, inpt):
        if torch.rand(()).item() >= self.p:
            return inpt
        image = _plain(inpt)
        height, width = image.shape[-2:]
        side = min(height, width)
        radius = _uniform(*self.radius) * side
        cy = height / 2 + _uniform(-self.shift, self.shift) * side
        cx = width / 2 + _uniform(-self.shift, self.shift) * side
        edge = max(1.0, _uniform(0.01, 0.05) * side)
        ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
        xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
        distance = ((ys - cy) ** 2 + (xs - cx) ** 2).sqrt()
        inside = ((radius - distance) / edge + 0.5).clamp(0, 1)  # 1 inside, 0 outside, a ramp `edge` wide
        level = float(torch.randint(0, self.max_level + 1, ()).item())
        out = image.to(torch.float32) * inside + level * (1 - inside)
        return _like(out.round().clamp(0, 255).to(image.dtype), inpt)


class HairLines(_PixelTransform):
    """Hair across the lesion: with probability `p`, 1-`max_hairs` thin dark curves (quadratic Bézier, 1-2 px wide
    at 224 px, wider in proportion on larger images) in a dark brown/black shade. uint8 image tensors (C, H, W);
    torch's RNG (seedable)."""

    def __init__(self, p: float = 0.5, max_hairs: int = 8, max_level: int = 60):
        super().__init__()
        self.p, self.max_hairs, self.max_level = p, max_hairs, max_level

    def transform_pixels(self, inpt):
        if torch.rand(()).item() >= self.p:
            return inpt
        image = _plain(inpt)
        height, width = image.shape[-2:]
        scale = torch.tensor([height, width], dtype=torch.float32)
        mask = torch.zeros(height * width, dtype=torch.bool)
        steps = torch.linspace(0, 1, 3 * max(height, width))[:, None]
        for _ in range(int(torch.randint(1, self.max_hairs + 1, ()).item())):
            start, control, end = torch.rand(3, 2) * scale  # (y, x) points; the curve may leave the image
            end = start + (end - start) * _uniform(0.3, 1.0)
            points = (1 - steps) ** 2 * start + 2 * (1 - steps) * steps * control + steps ** 2 * end
            thickness = max(1, round(_uniform(1.0, 2.0) * min(height, width) / 224))
            offsets = torch.arange(thickness, dtype=torch.float32) - thickness / 2
            ys = (points[:, :1] + offsets).round().long()[:, :, None].expand(-1, -1, thickness).flatten()
            xs = (points[:, 1:] + offsets).round().long()[:, None, :].expand(-1, thickness, -1).flatten()
            keep = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
            mask[ys[keep] * width + xs[keep]] = True
        mask = mask.view(height, width)
        level = torch.randint(0, self.max_level + 1, ()).item()
        colour = torch.tensor([level, level * 0.8, level * 0.6], dtype=torch.float32)[: image.shape[-3], None, None]
        out = torch.where(mask, colour.round().to(image.dtype), image)
        return _like(out, inpt)


def build_transforms(image_size: int, mean: Sequence[float], std: Sequence[float], train: bool,
                     strength: float = 1.0, *, color_constancy_power: float | None = None,
                     resize_mode: str = "crop",
                     interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR,
                     augmentation: str = "standard") -> v2.Compose:
    """Images → uint8 tensors → Shades-of-Gray colour constancy (`color_constancy_power`, None = off) → ...

    Eval: the image processor's resize (`resize_mode` "crop": shortest edge + centre crop; "squash": the whole image
    resized) → float → normalise; `transforms_for_processor` builds it from a saved processor, and it then gives the
    processor's pixel values. Train: random resized crop (for "squash" after squashing the whole image to a square),
    flips, rotation and colour jitter scaled by `strength` (0 = the eval transform); `augmentation="dermoscopy"` adds
    a wider scale/aspect range, stronger hue, a dark dermoscope frame or vignette, hair-like lines and Gaussian blur.
    Colour constancy always comes first, before any augmentation."""
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}")
    head: list = [v2.ToImage()]
    if color_constancy_power is not None:
        head.append(ShadesOfGray(color_constancy_power))
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    if not train or strength <= 0:
        return v2.Compose([*head, FitToSquare(image_size, resize_mode, interpolation), *tail])
    s = min(strength, 2.0)
    dermoscopy = augmentation == "dermoscopy"
    if resize_mode == "squash":
        head.append(SquashToSquare(interpolation))
    ratio = (3 / 4, 4 / 3) if not dermoscopy else ((3 / 4) ** (1 + s), (4 / 3) ** (1 + s))
    steps = [
        v2.RandomResizedCrop(image_size, scale=(max(0.08, 1 - 0.65 * s), 1.0), ratio=ratio,
                             interpolation=interpolation, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),  # dermoscopy has no canonical orientation
        v2.RandomRotation(degrees=30 * s),
    ]
    if dermoscopy:  # what the dermoscope and the skin add: a field stop or vignette, hair
        steps += [DermoscopeFrame(p=min(0.5 * s, 1.0)), HairLines(p=min(0.5 * s, 1.0))]
    hue = 0.02 * s if not dermoscopy else min(0.06 * s, 0.5)
    steps.append(v2.ColorJitter(brightness=0.2 * s, contrast=0.2 * s, saturation=(0.3 if dermoscopy else 0.2) * s,
                                hue=hue))
    if dermoscopy:
        kernel = 2 * max(1, image_size // 32) + 1
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 0.5 + 1.0 * s))], p=min(0.3 * s, 1.0)))
    return v2.Compose([*head, *steps, *tail])


def transforms_for_processor(processor, train: bool, strength: float = 1.0,
                             augmentation: str = "standard") -> v2.Compose:
    """`build_transforms` with the processor's size, mean/std, resizing and colour constancy (the eval transform
    gives the processor's pixel values)."""
    from .image_processing import processor_settings

    settings = processor_settings(processor)
    return build_transforms(settings["image_size"], settings["mean"], settings["std"], train=train,
                            strength=strength, color_constancy_power=settings["color_constancy_power"],
                            resize_mode=settings["resize_mode"], interpolation=settings["interpolation"],
                            augmentation=augmentation)


def image_with_lesion_mask(image: Image.Image) -> tuple[Image.Image, tv_tensors.Mask]:
    """The image and its proxy lesion mask (`lesion_focus.lesion_mask`) as a (1, H, W) uint8 `tv_tensors.Mask`
    that geometric transforms move with the image; all zeros where no lesion was found."""
    from .lesion_focus import lesion_mask

    mask = lesion_mask(np.asarray(image))
    if mask is None:
        mask = np.zeros((image.height, image.width), dtype=bool)
    return image, tv_tensors.Mask(torch.from_numpy(mask.astype(np.uint8))[None])


def make_transform_fn(transform: Callable, lesion_masks: bool = False) -> Callable[[dict], dict]:
    """For `Dataset.set_transform`: a batch of PIL images + labels -> pixel_values + labels; with `lesion_masks`,
    also each image's proxy lesion mask after the same geometric transforms (`lesion_mask`, (H, W) uint8)."""

    def apply(batch: dict) -> dict:
        images = [to_rgb(image) for image in batch["image"]]
        if not lesion_masks:
            batch["pixel_values"] = [transform(image) for image in images]
            return batch
        pairs = [transform(*image_with_lesion_mask(image)) for image in images]
        batch["pixel_values"] = [pixels for pixels, _ in pairs]
        batch["lesion_mask"] = [mask.as_subclass(torch.Tensor)[0] for _, mask in pairs]
        return batch

    return apply


def collate_fn(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stacks transformed examples into the model's inputs (`lesion_masks` too when the examples carry them)."""
    batch = {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["label"] for e in examples], dtype=torch.long),
    }
    if "lesion_mask" in examples[0]:
        batch["lesion_masks"] = torch.stack([e["lesion_mask"] for e in examples])
    return batch
