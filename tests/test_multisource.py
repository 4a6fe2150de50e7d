"""Several data sources (`--dataset A B`): per-source validation splits, test splits kept per source, cross-source
duplicates dropped from train, clear errors for bad sources, and per-source metrics and reports (training and
eval-only) on a few dozen generated images."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_TRAIN_ARGS, make_image_folder, tiny_config

import modeling.training as training
from modeling.data import DataError, build_dataset_dict, source_names
from train_hf import parse_args


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> tuple[Path, Path]:
    """A: train 12 + test 4 per class (split folders). B: 10 per class, no splits, 64 px images, with a copy of one
    of A's test images and a copy of one of A's train images."""
    root = tmp_path_factory.mktemp("sources")
    a = make_image_folder(root / "srcA", {"train": 12, "test": 4}, seed=0)
    make_image_folder(root / "tmpB", {"all": 10}, seed=1, size=64)
    b = root / "srcB"
    shutil.move(str(root / "tmpB" / "all"), str(b))
    shutil.copy(a / "test" / "malignant" / "1.jpg", b / "malignant" / "copy_of_a_test.jpg")
    shutil.copy(a / "train" / "benign" / "2.jpg", b / "benign" / "copy_of_a_train.jpg")
    return a, b


def counts(prepared, split: str) -> dict[str, int]:
    return {name: len(rows) for name, rows in prepared.source_indices(split).items()}


def test_per_source_splits_keep_each_test_split_and_carve_validation_per_source(two_sources):
    a, b = two_sources
    prepared = build_dataset_dict([a, b], validation_fraction=0.25, seed=3)
    assert prepared.sources == ["srcA", "srcB"] and prepared.labels == ["benign", "malignant"]
    assert prepared.source_roots == {"srcA": str(a), "srcB": str(b)}
    assert counts(prepared, "test") == {"srcA": 8}  # A's own test split, untouched; B gets none
    assert counts(prepared, "validation") == {"srcA": 6, "srcB": 6}  # 25 % of each source's train
    assert counts(prepared, "train") == {"srcA": 18, "srcB": 16}
    for split in prepared.dataset:
        part = prepared.dataset[split].with_format(None)
        for name, rows in prepared.source_indices(split).items():
            root = prepared.source_roots[name]
            assert all(part["path"][i].startswith(root) for i in rows)
            assert all(part["source"][i] == name for i in rows)
    validation = prepared.dataset["validation"].with_format(None)
    for rows in prepared.source_indices("validation").values():  # stratified within each source
        assert np.bincount(np.asarray(validation["label"])[rows]).tolist() == [3, 3]
    again = build_dataset_dict([a, b], validation_fraction=0.25, seed=3)
    assert again.dataset["validation"]["path"] == prepared.dataset["validation"]["path"]  # seeded
    assert again.dataset["validation"]["path"] != build_dataset_dict(
        [a, b], validation_fraction=0.25, seed=4).dataset["validation"]["path"]
    # A test split for the source without one only on request; A's own test split stays as it was.
    carved = build_dataset_dict([a, b], validation_fraction=0.25, seed=3, carve_test_fraction=0.2)
    assert counts(carved, "test") == {"srcA": 8, "srcB": 5}
    assert sorted(carved.dataset["test"].with_format(None)["path"])[:8] == sorted(
        prepared.dataset["test"].with_format(None)["path"])
    # One source (a string, as before) also gets its source column.
    single = build_dataset_dict(str(a), validation_fraction=0.25, seed=3)
    assert single.sources == ["srcA"] and set(single.dataset["train"].with_format(None)["source"]) == {"srcA"}


def test_cross_source_duplicates_are_dropped_from_train_only(two_sources):
    a, b = two_sources
    kept = build_dataset_dict([a, b], validation_fraction=0.25, seed=3)
    exact = [pair for pair in kept.duplicates["exact"] if pair["sources"] == ["srcA", "srcB"]]
    assert {Path(p).name for pair in exact for p in (pair["a"], pair["b"])} >= {"copy_of_a_test.jpg"}
    assert kept.duplicates["summary"]["exact"]["cross_source"] >= 2
    dropped = build_dataset_dict([a, b], validation_fraction=0.25, seed=3, drop_cross_split_duplicates=True)
    names = {Path(p).name for p in dropped.dropped_duplicates}
    assert "copy_of_a_test.jpg" in names  # B's train copy of A's test image
    train = {Path(p).name for p in dropped.dataset["train"].with_format(None)["path"]}
    assert "copy_of_a_test.jpg" not in train
    assert counts(dropped, "test") == {"srcA": 8}  # test never changes
    # No validation/test image has a copy (exact or near) left in train.
    for pair in dropped.duplicates["exact"] + dropped.duplicates["near"]:
        assert "train" not in pair["splits"] or pair["splits"] == ["train"], pair


def test_label_sets_that_differ_name_both_sources(two_sources, tmp_path):
    a, _ = two_sources
    other = make_image_folder(tmp_path / "dermnet", {"train": 3}, labels=("benign", "nevus"))
    with pytest.raises(DataError) as error:
        build_dataset_dict([a, other])
    message = str(error.value)
    assert "srcA" in message and "dermnet" in message
    assert "['benign', 'malignant']" in message and "['benign', 'nevus']" in message


def test_bad_sources_are_clear_errors(two_sources, tmp_path):
    a, _ = two_sources
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*no readable images"):
        build_dataset_dict([a, tmp_path / "empty"])
    with pytest.raises(DataError, match="given twice"):
        build_dataset_dict([a, a])
    broken = make_image_folder(tmp_path / "broken", {"train": 3})
    (broken / "train" / "benign" / "truncated.jpg").write_bytes(b"\xff\xd8\xff" + b"0" * 50)
    prepared = build_dataset_dict([a, broken], validation_fraction=0.0)
    assert [Path(p).name for p, _ in prepared.skipped] == ["truncated.jpg"]
    assert source_names(["x/data", "y/data", "org/set"]) == ["x/data", "y/data", "org/set"]


@pytest.fixture(scope="module")
def two_source_run(tmp_path_factory, two_sources) -> Path:
    a, b = two_sources
    config_dir = tmp_path_factory.mktemp("config")
    tiny_config().save_pretrained(config_dir)
    out = tmp_path_factory.mktemp("two_source_run")
    args = parse_args(["--dataset", str(a), str(b), "--config_name", str(config_dir), "--output_dir", str(out),
                       "--num_train_epochs", "1", "--validation_fraction", "0.25", "--test_fraction", "0.2",
                       "--drop_duplicates", "true", "--color_constancy", "true", "--resize_mode", "squash",
                       "--augmentation", "dermoscopy", "--metric_for_best_model", "source_mean_roc_auc",
                       *TINY_TRAIN_ARGS])
    training.main(*args)
    return out


def test_training_reports_every_metric_per_source_and_pooled(two_source_run):
    metrics = json.loads((two_source_run / "metrics.json").read_text())
    assert set(metrics["datasets"]) == {"srcA", "srcB"}
    assert metrics["test"]["n"] == 8 + 5  # pooled
    per_source = metrics["sources"]
    assert set(per_source) == {"srcA", "srcB"}
    assert per_source["srcA"]["test"]["n"] == 8 and per_source["srcB"]["test"]["n"] == 5
    assert per_source["srcA"]["validation"]["n"] + per_source["srcB"]["validation"]["n"] == metrics["validation"]["n"]
    for name in ("srcA", "srcB"):
        for split in ("test", "validation"):
            summary = per_source[name][split]
            assert set(summary["metrics"]) >= {"accuracy", "roc_auc", "recall", "specificity"}
            assert summary["threshold"] == metrics["test"]["threshold"]  # one decision rule
    settings = metrics["settings"]
    assert settings["color_constancy"] == 6.0 and settings["resize_mode"] == "squash"
    assert settings["augmentation"] == "dermoscopy" and len(settings["dataset"]) == 2
    report = two_source_run / "report"
    for directory in (report, report / "validation"):
        assert (directory / "roc_by_source.png").stat().st_size > 0
        for name in ("srcA", "srcB"):
            assert (directory / "sources" / name / "report.json").is_file()
        text = (directory / "report.md").read_text()
        assert "## Per source" in text and "| srcA |" in text and "| pooled |" in text
    ids = (report / "sources" / "srcB" / "predictions.csv").read_text().splitlines()[1:]
    assert ids and all(row.startswith("srcB/") for row in ids)
    processor = json.loads((two_source_run / "preprocessor_config.json").read_text())
    assert processor["do_color_constancy"] and processor["resize_mode"] == "squash"
    assert processor["auto_map"]["AutoImageProcessor"].startswith("image_processing_asff_resnet.")
    assert (two_source_run / "image_processing_asff_resnet.py").is_file()
    assert "srcA" in (two_source_run / "README.md").read_text()


def test_checkpoints_are_selected_on_the_mean_of_the_per_source_validation_roc_aucs(two_source_run):
    settings = json.loads((two_source_run / "metrics.json").read_text())["settings"]
    assert settings["metric_for_best_model"] == "source_mean_roc_auc"
    state = json.loads(next(two_source_run.glob("checkpoint-*/trainer_state.json")).read_text())
    evaluation = [entry for entry in state["log_history"] if "eval_source_mean_roc_auc" in entry][-1]
    per_source = [evaluation["eval_roc_auc_srcA"], evaluation["eval_roc_auc_srcB"]]
    assert evaluation["eval_source_mean_roc_auc"] == pytest.approx(np.mean(per_source))
    assert state["best_metric"] == pytest.approx(evaluation["eval_source_mean_roc_auc"])


def test_the_per_source_metric_weighs_every_source_alike():
    from transformers import EvalPrediction

    # Source "big" (8 images) is ranked perfectly, "small" (4) backwards: pooled ROC AUC would favour "big".
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1])
    p1 = np.array([.1, .2, .3, .4, .6, .7, .8, .9, .8, .9, .1, .2])
    logits = np.log(np.stack([1 - p1, p1], axis=1))
    sources = ["big"] * 8 + ["small"] * 4
    metrics = training.make_compute_metrics(sources)(EvalPrediction(predictions=logits, label_ids=labels))
    assert metrics["roc_auc_big"] == pytest.approx(1.0) and metrics["roc_auc_small"] == pytest.approx(0.0)
    assert metrics["source_mean_roc_auc"] == pytest.approx(0.5) and 0.5 < metrics["roc_auc"] < 1.0
    one_class = training.make_compute_metrics(["big"] * 8 + ["small"] * 2 + ["x"] * 2)(
        EvalPrediction(predictions=logits, label_ids=labels))  # "small" all benign, "x" all malignant: left out
    assert "roc_auc_small" not in one_class and one_class["source_mean_roc_auc"] == pytest.approx(1.0)
    assert "source_mean_roc_auc" not in training.make_compute_metrics(["big"] * 12)(
        EvalPrediction(predictions=logits, label_ids=labels))


def test_the_per_source_metric_needs_several_sources(two_sources, tmp_path):
    a, _ = two_sources
    with pytest.raises(training.UsageError, match="two or more --dataset sources"):
        training.main(*parse_args(["--dataset", str(a), "--output_dir", str(tmp_path / "out"),
                                   "--metric_for_best_model", "source_mean_roc_auc", *TINY_TRAIN_ARGS]))


def test_release_export_keeps_the_processor_code(two_source_run, tmp_path):
    from transformers import AutoImageProcessor

    from modeling.export import export_half_precision

    release = export_half_precision(two_source_run, tmp_path / "release")
    assert (release / "image_processing_asff_resnet.py").is_file()
    processor = AutoImageProcessor.from_pretrained(release, trust_remote_code=True)
    assert processor.do_color_constancy and processor.resize_mode == "squash"


def test_eval_only_on_several_sources(two_source_run, two_sources, tmp_path):
    """Each source's test split, or all of a source without one; per-source and pooled metrics."""
    a, b = two_sources
    result = training.main(*parse_args(["--do_eval_only", "true", "--model_name_or_path", str(two_source_run),
                                        "--dataset", str(a), str(b), "--output_dir", str(tmp_path),
                                        *TINY_TRAIN_ARGS]))
    assert result["sources"]["srcA"]["test"]["n"] == 8  # A's test split
    assert result["sources"]["srcB"]["test"]["n"] == 22  # all of B (no splits)
    assert result["test"]["n"] == 30
    assert (tmp_path / "report" / "roc_by_source.png").is_file()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["sources"]["srcB"]["test"]["metrics"] == result["sources"]["srcB"]["test"]["metrics"]


def test_eval_only_names_a_source_it_evaluates_whole(two_source_run, two_sources, tmp_path, caplog):
    """A source without a test split is evaluated whole, and said so: a model trained on it has seen most of it."""
    a, b = two_sources
    with caplog.at_level("WARNING", logger="modeling.training"):
        result = training.main(*parse_args(["--do_eval_only", "true", "--model_name_or_path", str(two_source_run),
                                            "--dataset", str(a), str(b), "--output_dir", str(tmp_path),
                                            *TINY_TRAIN_ARGS]))
    assert result["whole_sources"] == ["srcB"]
    assert "srcB has no test split" in caplog.text
    assert "no test split" in result["test"]["title"]


def _ids(report: Path) -> list[str]:
    from modeling.report import read_predictions

    return read_predictions(report / "predictions.csv")[0]


def test_eval_only_recreates_the_splits_training_carved(two_source_run, two_sources, tmp_path):
    """`--eval_split validation` (and `--test_fraction`) give the very images a training run on the same data held
    out, also for one of its sources alone: what a cross-source table of a one-source model needs."""
    from modeling.compare import compare_runs, paired_ids

    a, b = two_sources
    split_args = ["--validation_fraction", "0.25", "--test_fraction", "0.2", "--drop_duplicates", "true",
                  "--cam_frame_share", "false", *TINY_TRAIN_ARGS]
    both = training.main(*parse_args(["--do_eval_only", "true", "--model_name_or_path", str(two_source_run),
                                      "--dataset", str(a), str(b), "--eval_split", "validation",
                                      "--output_dir", str(tmp_path / "both"), *split_args]))
    trained = json.loads((two_source_run / "metrics.json").read_text())
    assert both["validation"]["n"] == trained["validation"]["n"]
    assert sorted(_ids(tmp_path / "both" / "report" / "validation")) == sorted(
        _ids(two_source_run / "report" / "validation"))
    assert not (tmp_path / "both" / "report" / "report.json").exists()  # no test report pretends to be one

    tested = training.main(*parse_args(["--do_eval_only", "true", "--model_name_or_path", str(two_source_run),
                                        "--dataset", str(b), "--output_dir", str(tmp_path / "b_test"),
                                        *split_args]))
    assert tested["whole_sources"] == []
    assert tested["test"]["n"] == trained["sources"]["srcB"]["test"]["n"]  # the carved 20 %, not all of B

    training.main(*parse_args(["--do_eval_only", "true", "--model_name_or_path", str(two_source_run), "--dataset",
                               str(b), "--eval_split", "validation", "--output_dir", str(tmp_path / "b"),
                               *split_args]))
    alone = _ids(tmp_path / "b" / "report" / "validation")
    in_both = _ids(two_source_run / "report" / "validation" / "sources" / "srcB")
    assert paired_ids(alone, in_both) is not None  # B alone, B among two sources: the same validation images

    # The same model, read from its training run and from the one-source evaluation: the cross-source section
    # pairs B's validation images and finds no difference.
    payload = compare_runs(tmp_path / "cmp", {"two": two_source_run, "again": [tmp_path / "b"]}, n_resamples=20)
    cross = payload["cross_source"]
    assert cross["models"]["again"]["trained_on"] == ["srcA", "srcB"]  # read from the evaluated model's directory
    assert set(cross["models"]["again"]["sets"]) == {"srcB validation"}
    assert cross["paired_differences"]["again"]["srcB validation"]["roc_auc"]["delta"] == pytest.approx(0, abs=1e-6)
    assert "again" in (tmp_path / "cmp" / "comparison.md").read_text().split("Not in the test table")[1]


def test_eval_split_validation_needs_training_images(two_sources, two_source_run, tmp_path):
    a, _ = two_sources
    only_test = tmp_path / "only_test"
    shutil.copytree(a / "test", only_test / "test")
    with pytest.raises(training.UsageError, match="no training images"):
        training.main(*parse_args(["--do_eval_only", "true", "--model_name_or_path", str(two_source_run),
                                   "--dataset", str(only_test), "--eval_split", "validation",
                                   "--output_dir", str(tmp_path), *TINY_TRAIN_ARGS]))
