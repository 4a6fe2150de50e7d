"""Report: threshold choice, calibration, the bootstrap's batched metrics against the evaluate module, files,
saved predictions, comparison tables with paired differences, and the model card round trip."""

import json
import math
import re

import numpy as np
import pytest
from huggingface_hub import ModelCard
from sklearn.calibration import calibration_curve

from modeling.compare import comparison_table, write_comparison
from modeling.metrics import compute_classification_metrics
from modeling.metrics.statistics import (
    _as_arrays,
    _batched_metrics,
    bootstrap_ci,
    choose_threshold,
    expected_calibration_error,
    paired_bootstrap,
)
from modeling.model_card import build_model_card
from modeling.report import read_predictions, write_report

LABEL_NAMES = ["benign", "malignant"]


def binary_data(n: int = 300, seed: int = 0, decimals: int | None = 2) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced labels, informative but noisy scores; rounding makes ties, as real (fp16/float32) outputs do."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.2).astype(np.int64)
    p1 = np.clip(0.35 * labels + 0.65 * rng.random(n), 0, 1)
    p1 = np.round(p1, decimals) if decimals is not None else p1
    return labels, np.stack([1 - p1, p1], axis=1)


def multiclass_data(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    probs = np.round(rng.dirichlet([1, 1, 1], n) + 0.5 * np.eye(3)[labels], 2)
    return labels, probs / probs.sum(1, keepdims=True)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.57])
def test_batched_metrics_equal_the_module_binary(threshold):
    labels, probs = binary_data()
    expected = compute_classification_metrics(probs, labels, threshold)
    batched = _batched_metrics(*_as_arrays(labels, probs), threshold, np.arange(len(labels))[None])
    assert set(batched) == {*expected, "ece"}
    for name, value in expected.items():
        assert batched[name][0] == pytest.approx(value, abs=1e-12), name


def test_batched_metrics_equal_the_module_multiclass():
    labels, probs = multiclass_data()
    expected = compute_classification_metrics(probs, labels)
    batched = _batched_metrics(*_as_arrays(labels, probs), 0.5, np.arange(len(labels))[None])
    for name, value in expected.items():
        assert batched[name][0] == pytest.approx(value, abs=1e-12), name


def test_batched_metrics_on_resamples_equal_the_module():
    labels, probs = binary_data(n=80)
    index = np.random.default_rng(3).integers(0, 80, (4, 80))
    batched = _batched_metrics(*_as_arrays(labels, probs), 0.5, index)
    for row in range(4):
        expected = compute_classification_metrics(probs[index[row]], labels[index[row]])
        for name, value in expected.items():
            assert batched[name][row] == pytest.approx(value, abs=1e-12), name


def test_expected_calibration_error():
    labels, probs = binary_data(decimals=None)
    prob_true, prob_pred = calibration_curve(labels, probs[:, 1].astype(np.float32), n_bins=10)
    counts = np.histogram(probs[:, 1].astype(np.float32), bins=np.linspace(0, 1, 11))[0]
    counts = counts[counts > 0]
    assert expected_calibration_error(labels, probs) == pytest.approx(
        np.sum(counts * np.abs(prob_true - prob_pred)) / len(labels), abs=1e-6
    )
    # Calibrated by construction: every prediction says 0.25 and a quarter are positive.
    calibrated = np.tile([0.75, 0.25], (8, 1))
    assert expected_calibration_error([1, 0, 0, 0, 1, 0, 0, 0], calibrated) == pytest.approx(0.0, abs=1e-7)
    # Multi-class: on the top probability; always right with confidence 0.6 -> ECE 0.4.
    assert expected_calibration_error([0, 1], [[0.6, 0.3, 0.1], [0.2, 0.6, 0.2]]) == pytest.approx(0.4)


@pytest.mark.parametrize("method", ["youden", "f1"])
def test_choose_threshold_separates_separable_data(method):
    labels = np.array([0, 0, 0, 0, 1, 1])
    probs = np.stack([1 - (p := np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.6])), p], axis=1)
    threshold = choose_threshold(labels, probs, method)
    result = compute_classification_metrics(probs, labels, threshold)
    assert result["recall"] == 1.0 and result["specificity"] == 1.0
    assert threshold == pytest.approx(0.35)


def test_choose_threshold_edge_cases():
    labels, probs = multiclass_data(n=30)
    assert choose_threshold(labels, probs) == 0.5
    with pytest.raises(ValueError, match="method must be 'youden' or 'f1', got 'accuracy'"):
        choose_threshold([0, 1], [[0.5, 0.5], [0.4, 0.6]], method="accuracy")
    with pytest.warns(UserWarning):
        assert choose_threshold([1, 1], [[0.5, 0.5], [0.4, 0.6]]) == 0.5


def test_bootstrap_ci_covers_the_estimate_and_is_reproducible():
    labels, probs = binary_data()
    ci = bootstrap_ci(labels, probs, threshold=0.5, n_resamples=300, seed=1)
    point = {**compute_classification_metrics(probs, labels), "ece": expected_calibration_error(labels, probs)}
    assert set(ci) == set(point)
    for name, (low, high) in ci.items():
        assert low <= point[name] <= high, name
        assert high - low > 0, name
    assert bootstrap_ci(labels, probs, threshold=0.5, n_resamples=300, seed=1) == ci
    assert bootstrap_ci(labels, probs, threshold=0.5, n_resamples=300, seed=2) != ci
    bca = bootstrap_ci(labels, probs, threshold=0.5, n_resamples=300, seed=1, method="BCa")
    assert all(low <= point[name] <= high for name, (low, high) in bca.items())


def test_bootstrap_ci_multiclass():
    labels, probs = multiclass_data()
    ci = bootstrap_ci(labels, probs, n_resamples=200)
    assert set(ci) == {"accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "ece"}
    assert all(0 <= low <= high <= 1 for low, high in ci.values())


def test_write_report_binary(tmp_path):
    labels, probs = binary_data()
    summary = write_report(tmp_path, labels, probs, LABEL_NAMES, threshold=0.4, threshold_source="youden (validation)",
                           title="tiny", n_resamples=200)
    for name in ("roc.png", "pr.png", "confusion.png", "reliability.png", "report.json", "report.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "report.json").read_text()) == summary
    assert summary["figures"] == ["roc.png", "pr.png", "confusion.png", "reliability.png"]
    assert summary["n"] == 300 and sum(summary["class_counts"].values()) == 300
    assert summary["threshold"] == 0.4 and summary["threshold_source"] == "youden (validation)"
    assert summary["metrics"] == pytest.approx(compute_classification_metrics(probs, labels, 0.4))
    assert summary["metrics_at_0.5"] == pytest.approx(compute_classification_metrics(probs, labels, 0.5))
    assert set(summary["ci95"]) == {*summary["metrics"], "ece"}
    assert np.sum(summary["confusion_matrix"]) == 300
    markdown = (tmp_path / "report.md").read_text()
    assert "| metric | value | 95 % CI | value at 0.5 |" in markdown
    assert re.search(r"\| ROC AUC \| 0\.\d{3} \| \[0\.\d{3}, 0\.\d{3}\] \| 0\.\d{3} \|", markdown)


def test_write_report_multiclass_and_degenerate(tmp_path):
    labels, probs = multiclass_data(n=60)
    summary = write_report(tmp_path / "multi", labels, probs, ["a", "b", "c"], n_resamples=50)
    assert {"roc.png", "confusion.png"} <= set(summary["figures"])
    assert "specificity" not in summary["metrics"]
    # One class only: undefined AUCs are null in the JSON and "–" in the table; nothing crashes.
    labels, probs = binary_data(n=12)
    summary = write_report(tmp_path / "one", np.zeros(12, dtype=int), probs, LABEL_NAMES, n_resamples=50)
    assert summary["metrics"]["roc_auc"] is None and summary["ci95"]["roc_auc"] == [None, None]
    assert "roc.png" not in summary["figures"] and "confusion.png" in summary["figures"]
    assert "| ROC AUC | – | – | – |" in (tmp_path / "one" / "report.md").read_text()
    with pytest.raises(ValueError, match="1 label names for 2 classes"):
        write_report(tmp_path / "bad", labels, probs, ["only one name"], n_resamples=0)


@pytest.fixture(scope="module")
def summaries(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("reports")
    binary = write_report(out / "asff", *binary_data(), LABEL_NAMES, threshold=0.45, threshold_source="youden",
                          n_resamples=100)
    multi = write_report(out / "multi", *multiclass_data(n=60), ["a", "b", "c"], n_resamples=100)
    return {"asff_resnet50": binary, "three_class": multi}


def test_comparison_table(summaries, tmp_path):
    table = comparison_table(summaries)
    lines = table.splitlines()
    assert lines[0] == ("| model | threshold | accuracy | precision | recall | specificity | f1 | roc_auc | pr_auc | "
                        "ece |")
    assert len(lines) == 4 and lines[2].startswith("| asff_resnet50 | 0.450 |")
    assert re.search(r"\| 0\.\d{3} \[0\.\d{2}, 0\.\d{2}\] \|", lines[2])
    assert lines[3].split(" | ")[5] == "–"  # no specificity for three classes
    write_comparison(tmp_path, summaries)
    assert table in (tmp_path / "comparison.md").read_text()
    assert set(json.loads((tmp_path / "comparison.json").read_text())["models"]) == set(summaries)


def card_kwargs(summary: dict, **overrides) -> dict:
    kwargs = {
        "model_name": "asff-resnet50-isic2020",
        "summary": summary,
        "settings": {"fusion_mode": "channel", "learning_rate": 1e-3, "num_train_epochs": 2},
        "command": "python train_hf.py --fusion_mode channel --num_train_epochs 2",
        "dataset": "/data/isic2020-part",
        "label_names": LABEL_NAMES,
        "decision_threshold": summary["threshold"],
    }
    return {**kwargs, **overrides}


def test_the_cards_usage_snippets_load_the_model_where_it_is(summaries):
    """The snippets a user copies name the directory as the command named it (or the Hub id it was pushed to), not
    the folder's bare name, which loads nothing from anywhere else."""
    summary = summaries["asff_resnet50"]
    text = build_model_card(**card_kwargs(summary, model_path="runs/lite0")).text
    assert 'pipeline("image-classification", model="runs/lite0"' in text
    assert text.count('from_pretrained("runs/lite0"') == 2
    assert 'model="asff-resnet50-isic2020"' in build_model_card(**card_kwargs(summary)).text  # the name by default


def test_model_card_round_trips(summaries):
    summary = summaries["asff_resnet50"]
    card = build_model_card(**card_kwargs(summary, validation_summary=summary))
    loaded = ModelCard(str(card))
    assert loaded.data.decision_threshold == pytest.approx(0.45)
    assert loaded.data.library_name == "transformers" and loaded.data.pipeline_tag == "image-classification"
    assert loaded.data.license == "apache-2.0" and loaded.data.model_name == "asff-resnet50-isic2020"
    results = {r.metric_type: r for r in loaded.data.eval_results}
    assert set(results) == {*summary["metrics"], "ece"}
    for name, value in summary["metrics"].items():
        assert results[name].metric_value == pytest.approx(value, abs=1e-4)
        assert results[name].task_type == "image-classification" and results[name].dataset_split == "test"
    assert results["roc_auc"].dataset_type == "imagefolder" and loaded.data.datasets is None  # local folder
    text = loaded.text
    for needle in ("NOT A DIAGNOSTIC DEVICE", "Trained from scratch", "## Intended use", "## Limitations",
                   "| `learning_rate` | `0.001` |", card_kwargs(summary)["command"], "95 % CI",
                   "trust_remote_code=True", "Validation set", "2510.03876", "youden"):
        assert needle in text, needle


def test_model_card_hub_dataset_base_model_and_baseline(summaries):
    summary = summaries["asff_resnet50"]
    card = build_model_card(**card_kwargs(summary, dataset="someone/isic-2020", base_model="microsoft/resnet-50",
                                          settings={"architecture": "densenet121"}))
    loaded = ModelCard(str(card))
    assert loaded.data.datasets == ["someone/isic-2020"] and loaded.data.base_model == "microsoft/resnet-50"
    assert loaded.data.eval_results[0].dataset_type == "someone/isic-2020"
    assert "densenet121" in loaded.data.tags and "Trained from scratch" not in loaded.text
    assert "`densenet121`" in loaded.text


def test_model_card_skips_undefined_metrics(summaries):
    summary = json.loads(json.dumps(summaries["asff_resnet50"]))
    summary["metrics"]["roc_auc"] = None
    loaded = ModelCard(str(build_model_card(**card_kwargs(summary))))
    assert "roc_auc" not in {r.metric_type for r in loaded.data.eval_results}
    assert not any(isinstance(r.metric_value, float) and math.isnan(r.metric_value) for r in loaded.data.eval_results)


def test_paired_bootstrap_is_zero_for_a_model_against_itself_and_signed_for_a_better_one():
    labels, probs = binary_data()
    same = paired_bootstrap(labels, probs, probs, 0.5, 0.5, n_resamples=200)
    for name in ("accuracy", "roc_auc", "pr_auc", "ece"):
        assert same[name]["delta"] == 0 and same[name]["ci95"] == [0, 0], name
    better = np.stack([1 - labels, labels], axis=1) * 0.6 + probs * 0.4  # closer to the truth
    difference = paired_bootstrap(labels, better, probs, n_resamples=200)
    expected = compute_classification_metrics(better, labels)["roc_auc"] - compute_classification_metrics(
        probs, labels)["roc_auc"]
    assert difference["roc_auc"]["delta"] == pytest.approx(expected, abs=1e-12)
    low, high = difference["roc_auc"]["ci95"]
    assert 0 < low <= expected <= high
    with pytest.raises(ValueError, match=r"got \(10, 2\) and \(300,\)"):  # the second model's, not the same images
        paired_bootstrap(labels, probs, probs[:10])


def test_predictions_round_trip_and_paired_comparison(tmp_path):
    labels, probs = binary_data(n=80, decimals=None)  # full-precision probabilities
    ids = [f"test/{'malignant' if y else 'benign'}/{i}.jpg" for i, y in enumerate(labels)]
    write_report(tmp_path / "a", labels, probs, LABEL_NAMES, n_resamples=0, sample_ids=ids)
    read_ids, read_labels, read_probs, names = read_predictions(tmp_path / "a" / "predictions.csv")
    assert read_ids == ids and names == LABEL_NAMES and np.array_equal(read_labels, labels)
    assert np.array_equal(read_probs, probs.astype(np.float32))  # exact: recomputed metrics equal the report's
    summaries = {"a": {"threshold": 0.5, "metrics": {}}, "b": {"threshold": 0.4, "metrics": {}}}
    order = np.random.default_rng(1).permutation(80)  # the same images in another order are still paired
    shuffled = ([ids[i] for i in order], labels[order], probs[order])
    payload = write_comparison(tmp_path, summaries, {"a": (ids, labels, probs), "b": shuffled}, n_resamples=100)
    assert payload["paired_vs"] == "a"
    assert payload["paired_differences"]["b"]["roc_auc"]["delta"] == pytest.approx(0, abs=1e-12)
    text = (tmp_path / "comparison.md").read_text()
    assert "## Paired differences from `a` (same 80 images)" in text and "| b | " in text
    with pytest.raises(ValueError, match="same images"):
        write_comparison(tmp_path, summaries, {"a": (ids, labels, probs), "b": (ids[:79], labels[:79], probs[:79])})


def test_a_run_on_one_source_pairs_with_a_run_on_several(tmp_path):
    """A run on several sources names its test images `<source>/test/...`, a run on one `test/...`: evaluated on the
    same images they pair; images that differ after the source folder still do not."""
    rng = np.random.default_rng(3)
    labels, p = rng.integers(0, 2, 40), rng.random(40)
    probs = np.stack([1 - p, p], axis=1)
    ids = [f"test/{'malignant' if y else 'benign'}/{i}.jpg" for i, y in enumerate(labels)]
    both = [f"isic2020-part/{sample}" for sample in ids]
    summaries = {"one": {"threshold": 0.5, "metrics": {}}, "both": {"threshold": 0.5, "metrics": {}}}
    order = rng.permutation(40)
    payload = write_comparison(tmp_path, summaries, {"one": (ids, labels, probs),
                                                        "both": ([both[i] for i in order], labels[order],
                                                                 probs[order])}, n_resamples=50)
    assert payload["paired_differences"]["both"]["roc_auc"]["delta"] == pytest.approx(0, abs=1e-12)
    other = [f"isic2020-part/test/x/{i}.jpg" for i in range(40)]
    elsewhere = [f"isic2019-part/{sample}" for sample in ids]  # another source's images of the same names
    for wrong in (other, elsewhere):
        with pytest.raises(ValueError, match="same images"):
            write_comparison(tmp_path, summaries, {"one": (both, labels, probs), "both": (wrong, labels, probs)})


def _fake_run(folder, splits: dict[str, dict[str, int]], trained: list[str] | None, model=None, seed: int = 0,
              init=None):
    """A run directory as train_hf.py writes it: {split: {source: n images}} reports (per source with several),
    `metrics.json` naming the sources, and either a training run's "train" entry or an evaluated model's path."""
    from modeling.report import write_source_reports

    rng = np.random.default_rng(seed)
    names = list(dict.fromkeys(source for per_source in splits.values() for source in per_source))
    for split, per_source in splits.items():
        labels = np.concatenate([np.arange(n) % 2 for n in per_source.values()])
        p = np.clip(0.3 * labels + 0.7 * rng.random(len(labels)), 0, 1)
        probs = np.stack([1 - p, p], axis=1)
        sources = [source for source, n in per_source.items() for _ in range(n)]
        folder_of = {"train": "train", "test": "test", "validation": "train"}
        index = [i for n in per_source.values() for i in range(n)]  # each source numbers its own images
        ids = [f"{folder_of[split]}/{LABEL_NAMES[y]}/{i}.jpg" for i, y in zip(index, labels, strict=True)]
        if len(names) > 1:
            ids = [f"{source}/{sample}" for source, sample in zip(sources, ids, strict=True)]
        out = folder / "report" / ("validation" if split == "validation" else "")
        write_report(out, labels, probs, LABEL_NAMES, n_resamples=20, sample_ids=ids)
        if len(names) > 1:
            write_source_reports(out, labels, probs, LABEL_NAMES, sources, n_resamples=20, sample_ids=ids)
    metrics = {"datasets": {name: f"data/{name}" for name in names}}
    metrics.update({"train": {}, "settings": {"init": str(init or "random (from scratch)")}} if trained is not None
                   else {"model": str(model)})
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_cross_source_table_gathers_a_models_runs_and_marks_unseen_sources(tmp_path):
    """A model trained on A, with an evaluation-only run on B's validation split beside it, against a model
    trained on A + B: one row each, B in italics for the first; a set read twice, or no report at all, is an error."""
    from modeling.compare import compare_runs, main, parse_runs

    both = _fake_run(tmp_path / "both", {"test": {"A": 30}, "validation": {"A": 20, "B": 24}}, ["A", "B"])
    one = _fake_run(tmp_path / "one", {"test": {"A": 30}, "validation": {"A": 20}}, ["A"], seed=1)
    one_on_b = _fake_run(tmp_path / "one_on_b", {"validation": {"B": 24}}, None, model=one, seed=2)
    payload = compare_runs(tmp_path / "cmp", {"both": both, "one": [one, one_on_b]}, n_resamples=20)
    cross = payload["cross_source"]
    assert cross["sets"] == ["A test", "A validation", "B validation"]
    assert cross["models"]["one"]["trained_on"] == ["A"]
    assert set(cross["models"]["one"]["sets"]) == {"A test", "A validation", "B validation"}
    assert set(cross["paired_differences"]["one"]) == {"A test", "A validation", "B validation"}
    rows = {line.split(" | ")[0].strip("| "): line for line in (tmp_path / "cmp" / "comparison.md").read_text()
            .split("## Per source and split")[1].split("Each model at")[0].splitlines() if line.startswith("| ")}
    assert rows["one"].count("*") == 4 and rows["one"].split(" | ")[-1].startswith("*")  # B: never trained on
    assert "*" not in rows["both"]
    assert parse_runs(["x=r1", "y=r2", "x=r3", "r4"]) == {"x": ["r1", "r3"], "y": ["r2"], "r4": ["r4"]}
    # B's validation split carved with other settings: in the table, but never paired with the reference's.
    other = _fake_run(tmp_path / "other", {"test": {"A": 30}, "validation": {"B": 20}}, ["B"], seed=3)
    payload = compare_runs(tmp_path / "cmp2", {"both": both, "other": other}, n_resamples=20)
    assert payload["cross_source"]["paired_differences"]["other"]["B validation"] == {"same_images": False}
    assert "roc_auc" in payload["cross_source"]["paired_differences"]["other"]["A test"]
    assert "| other | +" in (text := (tmp_path / "cmp2" / "comparison.md").read_text()) or "| other | -" in text
    assert text.split("### ROC AUC, paired")[1].count("| other images |") == 1 and "not comparable" in text
    with pytest.raises(SystemExit):  # the same reports twice under one name
        main(["--output_dir", str(tmp_path / "c2"), f"one={one}", f"one={one}"])
    with pytest.raises(SystemExit):
        main(["--output_dir", str(tmp_path / "c3"), f"x={tmp_path / 'nowhere'}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main(["--output_dir", str(tmp_path / "c4"), f"x={tmp_path / 'empty'}"])


def test_a_comparison_on_one_source_and_split_has_no_cross_source_section(tmp_path):
    a = _fake_run(tmp_path / "a", {"test": {"A": 30}}, ["A"])
    b = _fake_run(tmp_path / "b", {"test": {"A": 30}}, ["A"], seed=1)
    from modeling.compare import compare_runs

    payload = compare_runs(tmp_path / "cmp", {"a": a, "b": b}, n_resamples=20)
    assert "cross_source" not in payload and "paired_differences" in payload


def test_a_model_with_two_test_reports_is_compared_on_the_references_images(tmp_path):
    """A model trained on B (its own B test report) and evaluated on A's test split: the pooled test table pairs
    the A report with the reference's A test images, whichever order its directories were given in."""
    from modeling.compare import compare_runs

    both = _fake_run(tmp_path / "both", {"test": {"A": 30}, "validation": {"A": 20, "B": 24}}, ["A", "B"])
    b_own = _fake_run(tmp_path / "b_own", {"test": {"B": 16}, "validation": {"B": 10}}, ["B"], seed=4)
    b_on_a = _fake_run(tmp_path / "b_on_a", {"test": {"A": 30}}, None, model=b_own, seed=5)
    for order in ([b_own, b_on_a], [b_on_a, b_own]):
        payload = compare_runs(tmp_path / "cmp", {"both": both, "b": order}, n_resamples=20)
        assert payload["models"]["b"]["n"] == 30 and "roc_auc" in payload["paired_differences"]["b"]
        assert set(payload["cross_source"]["models"]["b"]["sets"]) == {"A test", "B test", "B validation"}
        assert payload["cross_source"]["models"]["b"]["trained_on"] == ["B"]


def test_a_fine_tuned_model_was_trained_on_its_starting_models_sources_too(tmp_path):
    """Fine-tuned on B from a model trained on A: A is not a source it never saw (no italics), also when the
    fine-tuned model is read through an evaluation-only run."""
    from modeling.compare import compare_runs, trained_on

    start = _fake_run(tmp_path / "start", {"test": {"A": 30}}, ["A"])
    tuned = _fake_run(tmp_path / "tuned", {"test": {"B": 16}, "validation": {"B": 10}}, ["B"], seed=1, init=start)
    tuned_on_a = _fake_run(tmp_path / "tuned_on_a", {"test": {"A": 30}}, None, model=tuned, seed=2)
    assert trained_on(tuned) == ["A", "B"] and trained_on(tuned_on_a) == ["A", "B"]
    assert trained_on(start) == ["A"]
    compare_runs(tmp_path / "cmp", {"start": start, "tuned": [tuned, tuned_on_a]}, n_resamples=20)
    table = (tmp_path / "cmp" / "comparison.md").read_text().split("## Per source and split")[1].split("Each model")[0]
    assert "*" not in table and "| tuned | A + B |" in table
