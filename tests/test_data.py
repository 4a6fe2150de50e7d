"""Data preparation: folders with and without splits, validation carving, duplicates, bad files, transforms."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import lesion_image, make_image_folder
from PIL import Image

from modeling.data import (
    DataError,
    build_dataset_dict,
    build_transforms,
    collate_fn,
    in_model_label_order,
    make_transform_fn,
)


def test_split_folder_gives_stratified_validation_and_untouched_test(image_folder):
    prepared = build_dataset_dict(image_folder, validation_fraction=0.25, seed=1)
    ds = prepared.dataset
    assert set(ds) == {"train", "validation", "test"}
    assert prepared.labels == ["benign", "malignant"]
    assert len(ds["test"]) == 12 and len(ds["train"]) + len(ds["validation"]) == 32
    assert np.bincount(ds["validation"]["label"]).tolist() == [4, 4]  # stratified
    assert not set(ds["train"]["path"]) & set(ds["validation"]["path"])
    again = build_dataset_dict(image_folder, validation_fraction=0.25, seed=1).dataset
    assert again["validation"]["path"] == ds["validation"]["path"]  # seeded


def test_folder_without_splits_and_many_labels(tmp_path):
    root = make_image_folder(tmp_path / "all", {"x": 6}, labels=("a", "b", "c"))
    shutil.move(str(root / "x"), str(tmp_path / "flat"))
    prepared = build_dataset_dict(tmp_path / "flat", validation_fraction=0.2, carve_test_fraction=0.2, seed=0)
    assert prepared.labels == ["a", "b", "c"]
    assert set(prepared.dataset) == {"train", "validation", "test"}
    assert sum(len(v) for v in prepared.dataset.values()) == 18


def test_positive_label_is_class_1_in_every_source_and_split(tmp_path):
    """Labels sort alphabetically, so of nevus/melanoma, nevus would be class 1 (what the threshold, recall and ROC AUC
    are about); --positive_label puts the named one last, with every image keeping its own label."""
    first = make_image_folder(tmp_path / "first", {"train": 6, "test": 3}, labels=("nevus", "melanoma"))
    second = make_image_folder(tmp_path / "second", {"train": 6}, labels=("melanoma", "nevus"))
    assert build_dataset_dict([first, second], validation_fraction=0.2).labels == ["melanoma", "nevus"]
    prepared = build_dataset_dict([first, second], validation_fraction=0.2, positive_label="melanoma")
    assert prepared.labels == ["nevus", "melanoma"]
    for split in prepared.dataset.values():
        assert split.features["label"].names == ["nevus", "melanoma"]
        for label, path in zip(split["label"], split["path"], strict=True):
            assert Path(path).parent.name == prepared.labels[label]
    with pytest.raises(DataError, match="'mole' is not one of the data's labels"):
        build_dataset_dict(first, positive_label="mole")


def test_data_in_a_models_label_order_keeps_each_images_label(tmp_path):
    """Scoring a model whose classes are in another order (trained with --positive_label) re-indexes the data by name:
    a cast of the ClassLabel would keep the ids and so swap the labels of every image."""
    prepared = build_dataset_dict(make_image_folder(tmp_path / "d", {"test": 4}, labels=("melanoma", "nevus")),
                                  validation_fraction=0.0, evaluation_only=True)
    in_model_label_order(prepared, ["nevus", "melanoma"])
    test = prepared.dataset["test"]
    assert prepared.labels == test.features["label"].names == ["nevus", "melanoma"]
    assert [prepared.labels[label] for label in test["label"]] == [Path(path).parent.name for path in test["path"]]
    with pytest.raises(DataError, match="do not match the model's"):
        in_model_label_order(prepared, ["benign", "malignant"])


def test_duplicates_are_reported_and_dropped_from_train(tmp_path):
    root = make_image_folder(tmp_path, {"train": 5, "test": 3})
    shutil.copy(root / "test/benign/0.jpg", root / "train/benign/copy_of_test.jpg")
    shutil.copy(root / "train/malignant/0.jpg", root / "train/malignant/twin.jpg")
    prepared = build_dataset_dict(root, validation_fraction=0.0)
    exact = prepared.duplicates["exact"]
    assert {tuple(p["splits"]) for p in exact} >= {("test", "train"), ("train",)}
    dropped = build_dataset_dict(root, validation_fraction=0.0, drop_cross_split_duplicates=True)
    assert any(p.endswith("copy_of_test.jpg") for p in dropped.dropped_duplicates)
    assert len(dropped.dataset["test"]) == 6  # test is never changed
    assert dropped.duplicates["summary"]["exact"] == {"within_split": 0, "cross_split": 0}


def test_bad_files_are_skipped_and_named(tmp_path, caplog):
    root = make_image_folder(tmp_path, {"train": 4, "test": 2})
    (root / "train/benign/notes.txt").write_text("not an image")
    (root / "train/benign/empty.jpg").write_bytes(b"")
    data = (root / "train/benign/0.jpg").read_bytes()
    (root / "train/benign/truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "train/malignant/fake.png").write_bytes(b"garbage" * 20)
    prepared = build_dataset_dict(root, validation_fraction=0.0)
    skipped = {p.split("/")[-1] for p, _ in prepared.skipped}
    assert skipped == {"notes.txt", "empty.jpg", "truncated.jpg", "fake.png"}
    assert "truncated.jpg" in caplog.text
    assert len(prepared.dataset["train"]) == 8


def test_image_modes_are_converted(tmp_path):
    root = make_image_folder(tmp_path, {"train": 2, "test": 1})
    rng = np.random.default_rng(0)
    rgb = lesion_image(0, rng)
    rgb.convert("RGBA").save(root / "train/benign/rgba.png")
    rgb.convert("L").save(root / "train/benign/grey.png")
    Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).save(root / "train/benign/deep.png")
    prepared = build_dataset_dict(root, validation_fraction=0.0)
    train = prepared.dataset["train"]
    train.set_transform(make_transform_fn(build_transforms(32, [0.5] * 3, [0.5] * 3, train=False)))
    batch = collate_fn([train[i] for i in range(len(train))])
    assert batch["pixel_values"].shape == (len(train), 3, 32, 32)
    assert torch.isfinite(batch["pixel_values"]).all()
    paths = train.with_format(None)["path"]
    pixels = {Path(path).name: x for path, x in zip(paths, batch["pixel_values"], strict=True)}
    # The 16-bit copy of the grey image is scaled linearly to 8 bits (to_rgb stretches its range), not clipped to
    # white: PIL's own conversion would make every pixel 255, 1.0 after normalisation.
    deep, grey = pixels["deep.png"].flatten().numpy(), pixels["grey.png"].flatten().numpy()
    assert deep.min() < 0 and np.corrcoef(deep, grey)[0, 1] > 0.999


@pytest.mark.parametrize("layout, message", [
    ("empty", "no readable images"),
    ("single_class", "single class"),
    ("labels_differ", "same label folders"),
    ("unknown_split", "unknown split"),
])
def test_bad_layouts_raise_clear_errors(tmp_path, layout, message):
    root = tmp_path / "data"
    root.mkdir()
    if layout == "single_class":
        make_image_folder(root, {"train": 3}, labels=("benign",))
    elif layout == "labels_differ":
        make_image_folder(root, {"train": 3})
        make_image_folder(root, {"test": 3}, labels=("benign", "other"))
    elif layout == "unknown_split":
        make_image_folder(root, {"train": 3, "holdout": 2})
    with pytest.raises(DataError, match=message):
        build_dataset_dict(root)


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="could not load"):
        build_dataset_dict(str(tmp_path / "does-not-exist"))


def test_train_transform_augments_and_eval_is_deterministic():
    image = lesion_image(1, np.random.default_rng(0), size=64)
    evaluation = build_transforms(32, [0.5] * 3, [0.5] * 3, train=False)
    assert torch.equal(evaluation(image), evaluation(image))
    train = build_transforms(32, [0.5] * 3, [0.5] * 3, train=True, strength=1.0)
    torch.manual_seed(0)
    outputs = [train(image) for _ in range(3)]
    assert outputs[0].shape == (3, 32, 32) and not torch.equal(outputs[0], outputs[1])
    assert torch.equal(build_transforms(32, [0.5] * 3, [0.5] * 3, train=True, strength=0)(image), evaluation(image))


@pytest.mark.slow  # reads and hashes the real data set
@pytest.mark.real_data
def test_real_data_set_layout_and_known_duplicates(real_data):
    prepared = build_dataset_dict(real_data, validation_fraction=0.15, seed=42)
    sizes = {name: len(split) for name, split in prepared.dataset.items()}
    assert sizes["test"] == 660 and sizes["train"] + sizes["validation"] == 2637
    exact = {tuple(sorted("/".join(p.split("/")[-2:]) for p in (pair["a"], pair["b"])))
             for pair in prepared.duplicates["exact"]}
    assert ("malignant/768.jpg", "malignant/769.jpg") in exact
    dropped = build_dataset_dict(real_data, validation_fraction=0.15, seed=42, drop_cross_split_duplicates=True)
    assert len(dropped.dataset["test"]) == 660
    assert dropped.duplicates["summary"]["exact"] == {"within_split": 0, "cross_split": 0}
