"""`--balance_label_by` (modeling.sampling): the image-shape groups, Kamiran & Calders' reweighing (the label
independent of the group, group sizes and the label mix kept), the Trainer's weighted sampler, and the CLI end to
end on generated images."""

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Value
from datasets import Image as ImageFeature
from helpers import TINY_TRAIN_ARGS, tiny_config
from PIL import Image
from transformers import TrainingArguments

import modeling.training as training
from modeling.sampling import (
    ReweighedTrainer,
    group_keys,
    image_shape,
    image_shapes,
    reweighing_summary,
    reweighing_weights,
    shape_name,
)
from modeling.synthetic import make_image_folder
from train_hf import parse_args


@pytest.mark.parametrize(("size", "name"), [
    ((600, 450), "4:3"), ((450, 600), "4:3"), ((1024, 1024), "1:1"), ((1023, 1024), "1:1"), ((3000, 2000), "3:2"),
    ((640, 480), "4:3"), ((1920, 1080), "other"), ((300, 100), "other"), ((1000, 800), "other"),
])
def test_shape_names_the_nearest_common_ratio_within_three_percent(size, name):
    assert shape_name(*size) == name


def test_image_shape_reads_paths_undecoded_cells_and_images(tmp_path):
    image = Image.new("RGB", (60, 45), (200, 120, 100))
    image.save(tmp_path / "a.jpg")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    assert image_shape(str(tmp_path / "a.jpg")) == "4:3"
    assert image_shape({"bytes": buffer.getvalue(), "path": None}) == "4:3"
    assert image_shape({"bytes": None, "path": str(tmp_path / "a.jpg")}) == "4:3"
    assert image_shape(Image.new("RGB", (32, 32))) == "1:1"


def test_image_shapes_of_a_hub_style_split_without_files():
    images = [Image.new("RGB", size) for size in [(40, 30), (32, 32), (30, 20)]]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["benign", "malignant"]),
                         "path": Value("string")})
    split = Dataset.from_dict({"image": images, "label": [0, 1, 0], "path": ["org/set/train/0", "org/set/train/1",
                                                                             "org/set/train/2"]}, features=features)
    assert image_shapes(split) == ["4:3", "1:1", "3:2"]
    assert group_keys(split, ["shape", "label"]) == [("4:3", 0), ("1:1", 1), ("3:2", 0)]
    with pytest.raises(ValueError, match=r"no column \['site'\]"):
        group_keys(split, ["site"])


def test_reweighing_makes_the_label_independent_of_the_group_and_keeps_the_marginals():
    rng = np.random.default_rng(0)
    groups = [(g,) for g in rng.choice(["square", "4:3", "3:2"], size=400, p=[0.5, 0.4, 0.1])]
    base_rate = {"square": 0.65, "4:3": 0.2, "3:2": 0.3}
    labels = [int(rng.random() < base_rate[g]) for (g,) in groups]
    weights = reweighing_weights(groups, labels)
    groups_array, labels_array = np.array([g for (g,) in groups]), np.array(labels)
    overall = labels_array.mean()
    assert weights.sum() == pytest.approx(len(labels))
    for group in base_rate:
        index = groups_array == group
        assert weights[index].sum() == pytest.approx(index.sum())  # each group keeps its size
        assert weights[index & (labels_array == 1)].sum() / weights[index].sum() == pytest.approx(overall)
    # A grouping that already carries no label information changes nothing.
    assert np.allclose(reweighing_weights([("a",), ("a",), ("b",), ("b",)], [0, 1, 0, 1]), 1.0)
    summary = reweighing_summary(groups, labels, weights, ["benign", "malignant"])
    square = next(row for row in summary if row["group"] == "square")
    assert square["malignant_share_before"] > 0.55
    assert square["malignant_share_after"] == pytest.approx(overall, abs=1e-4)
    assert sum(row["images"] for row in summary) == 400


def test_the_trainer_draws_rows_in_proportion_to_their_weights(tmp_path):
    from modeling.modeling_asff_resnet import AsffResNetForImageClassification

    rows = Dataset.from_dict({"label": [0, 1, 0, 1]})
    weights = np.array([1.0, 1.0, 2.0, 4.0])
    args = TrainingArguments(output_dir=str(tmp_path), seed=7, report_to=[])
    trainer = ReweighedTrainer(model=AsffResNetForImageClassification(tiny_config()), args=args, train_dataset=rows,
                               sample_weights=weights)
    sampler = trainer._get_train_sampler()
    draws = Counter(i for _ in range(2000) for i in sampler)
    assert len(list(sampler)) == 4  # an epoch is as many draws as there are rows
    shares = np.array([draws[i] for i in range(4)]) / 8000
    assert np.allclose(shares, weights / weights.sum(), atol=0.02)
    again = ReweighedTrainer(model=trainer.model, args=args, train_dataset=rows, sample_weights=weights)
    assert list(again._get_train_sampler()) == list(trainer._get_train_sampler())  # seeded by args.seed
    with pytest.raises(ValueError, match="3 sample weights for 4 training rows"):
        ReweighedTrainer(model=trainer.model, args=args, train_dataset=rows, sample_weights=weights[:3])


@pytest.fixture(scope="module")
def shaped_sources(tmp_path_factory) -> tuple[Path, Path]:
    """Source A: square images. Source B: mostly 4:3 benign and square malignant images (plus two of the other
    kind each), so that in B the shape nearly tells the label."""
    root = tmp_path_factory.mktemp("shaped")
    a = make_image_folder(root / "srcA", {"train": 11, "test": 3}, seed=0)  # 34 train rows: no batch of one
    generated = make_image_folder(root / "generated", {"all": 12}, seed=1, size=48) / "all"
    b = root / "srcB"
    for label, shapes in {"benign": [(64, 48)] * 10 + [(48, 48)] * 2,
                          "malignant": [(48, 48)] * 10 + [(64, 48)] * 2}.items():
        (b / label).mkdir(parents=True)
        for path, size in zip(sorted((generated / label).glob("*.jpg")), shapes, strict=True):
            Image.open(path).resize(size).save(b / label / path.name)
    return a, b


def test_the_cli_reweighs_training_and_records_it(shaped_sources, tmp_path, monkeypatch, caplog):
    a, b = shaped_sources
    samplers = []
    original = ReweighedTrainer._get_train_sampler

    def spy(self, train_dataset=None):
        samplers.append(original(self, train_dataset))
        return samplers[-1]

    monkeypatch.setattr(ReweighedTrainer, "_get_train_sampler", spy)
    config_dir = tmp_path / "config"
    tiny_config().save_pretrained(config_dir)
    out = tmp_path / "run"
    training.main(*parse_args(["--dataset", str(a), str(b), "--config_name", str(config_dir), "--output_dir",
                               str(out), "--num_train_epochs", "1", "--validation_fraction", "0.25",
                               "--balance_label_by", "source", "shape",
                               *TINY_TRAIN_ARGS]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["balance_label_by"].startswith("source shape (reweighing, 3 groups")
    balance = metrics["balance_label_by"]
    assert balance["columns"] == ["source", "shape"]
    groups = {row["group"]: row for row in balance["groups"]}
    assert set(groups) == {"srcA / 1:1", "srcB / 1:1", "srcB / 4:3"}
    assert groups["srcB / 4:3"]["benign_share_before"] > 0.8  # the shortcut in the data ...
    after = {row["malignant_share_after"] for row in groups.values()}
    assert max(after) - min(after) < 1e-3  # ... is gone from what training samples
    assert sum(row["images"] for row in groups.values()) == metrics["settings"]["split_sizes"]["train"]
    assert "balance_label_by" in (out / "README.md").read_text()  # the card's settings name it
    assert "hold a single label" not in caplog.text
    assert len(samplers) == 1 and samplers[0].weights.shape == (metrics["settings"]["split_sizes"]["train"],)


def test_cli_mistakes_are_clear_errors(shaped_sources, tmp_path, tiny_model_dir):
    a, b = shaped_sources
    config_dir = tmp_path / "config"
    tiny_config().save_pretrained(config_dir)
    with pytest.raises(training.UsageError, match=r"--balance_label_by: no column \['site'\]"):
        training.main(*parse_args(["--dataset", str(a), str(b), "--config_name", str(config_dir), "--output_dir",
                                   str(tmp_path / "x"), "--balance_label_by", "site", *TINY_TRAIN_ARGS]))
    with pytest.raises(training.UsageError, match="cannot be made independent of itself"):
        training.main(*parse_args(["--dataset", str(a), str(b), "--config_name", str(config_dir), "--output_dir",
                                   str(tmp_path / "z"), "--balance_label_by", "source", "label", *TINY_TRAIN_ARGS]))
    with pytest.raises(training.UsageError, match="does nothing with --skip_training"):
        training.main(*parse_args(["--dataset", str(a), str(b), "--model_name_or_path", str(tiny_model_dir),
                                   "--skip_training", "true", "--output_dir", str(tmp_path / "y"),
                                   "--balance_label_by", "shape", *TINY_TRAIN_ARGS]))


def test_groups_with_one_label_are_named_in_a_warning(caplog):
    from datasets import Dataset

    rows = Dataset.from_dict({"label": [0, 0, 1, 1, 0], "site": ["a", "a", "b", "b", "b"]})
    with caplog.at_level("WARNING"):
        balance = training.label_balance(rows, ["site"], ["benign", "malignant"])
    assert "1 group(s) hold a single label" in caplog.text and ": a" in caplog.text
    groups = {row["group"]: row for row in balance["groups"]}
    assert groups["a"]["benign_share_after"] == 1.0  # nothing to mix
    assert groups["b"]["malignant_share_after"] == pytest.approx(0.4)  # the overall mix, 2 of 5
