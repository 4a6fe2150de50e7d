"""modeling.calibration and the OOD detector: temperature scaling, the threshold kept across calibration, the
Mahalanobis statistics saved with the weights (float32 even in a float16 release), fitting a saved model, flagging
non-dermoscopic images, and pipeline() with the config's decision rule."""

import json
import math

import numpy as np
import pytest
import torch
from app_fixtures import save_tiny_model
from helpers import make_image_folder, tiny_config
from huggingface_hub import ModelCard, ModelCardData
from safetensors import safe_open
from transformers import AutoModelForImageClassification, pipeline

from modeling import AsffResNetConfig, AsffResNetForImageClassification
from modeling.calibration import (
    attach_ood_scorer,
    calibrate_saved_model,
    calibrated_threshold,
    fit_mahalanobis,
    fit_temperature,
)
from modeling.decision import calibrated_probabilities, decide
from modeling.export import export_half_precision
from modeling.inference import load_classifier, predict, predict_batch
from modeling.ood_probes import SYNTHETIC_FAMILIES, synthetic_image, synthetic_images


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (4000, 2))
    labels = np.array([rng.random() < p for p in calibrated_probabilities(true_logits).numpy()[:, 1]], dtype=int)
    # The model is over-confident by a factor of 3: the fitted temperature undoes it.
    assert fit_temperature(true_logits * 3, labels) == pytest.approx(3, rel=0.1)
    assert fit_temperature(true_logits, labels) == pytest.approx(1, rel=0.1)
    assert fit_temperature(true_logits, np.zeros(4000, int)) == 1.0  # one class: nothing to fit


def test_calibration_on_too_few_images_says_so(caplog):
    """A separable handful of validation images sends T to its bound: the fit says it is unreliable, and
    `fit_calibration` warns about a validation split with few images of a class before fitting anything."""
    from modeling.calibration import fit_calibration

    separable = np.array([[3.0, -3.0], [2.0, -2.0], [-2.5, 2.5], [-3.0, 3.0]])
    with caplog.at_level("WARNING", logger="modeling.calibration"):
        assert fit_temperature(separable, np.array([0, 0, 1, 1])) < 0.1
    assert "near its lower bound" in caplog.text and "separable" in caplog.text
    caplog.clear()
    # Logits that say nothing about the labels send T to the other bound, and the warning names that cause.
    rng = np.random.default_rng(0)
    uninformative = rng.normal(size=(400, 2))
    with caplog.at_level("WARNING", logger="modeling.calibration"):
        assert fit_temperature(uninformative, rng.integers(0, 2, 400)) > 10
    assert "near its upper bound" in caplog.text and "barely tell the classes apart" in caplog.text
    assert "separable" not in caplog.text
    caplog.clear()
    torch.manual_seed(0)
    model = AsffResNetForImageClassification(tiny_config()).eval()
    batches = [{"pixel_values": torch.randn(6, 3, 32, 32), "labels": torch.tensor([0, 0, 0, 0, 1, 1])}]
    with caplog.at_level("WARNING", logger="modeling.calibration"):
        fit_calibration(model, None, batches)
    assert "2 image(s) of its rarer class" in caplog.text and "unreliable" in caplog.text


def test_calibrated_threshold_keeps_every_decision():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (500, 2))
    raw, temperature = 0.66, 2.7
    mapped = calibrated_threshold(raw, temperature)
    before = [decide(p, raw) for p in calibrated_probabilities(logits).numpy()]
    after = [decide(p, mapped) for p in calibrated_probabilities(logits, temperature).numpy()]
    assert before == after and mapped < raw  # T > 1 pulls probabilities towards 0.5
    assert calibrated_threshold(0.5, 5.0) == pytest.approx(0.5)


def test_mahalanobis_statistics():
    rng = np.random.default_rng(2)
    features = np.concatenate([rng.normal(0, 1, (200, 8)), rng.normal(3, 1, (200, 8))])
    labels = np.repeat([0, 1], 200)
    means, precision = fit_mahalanobis(features, labels, 2)
    np.testing.assert_allclose(means, [features[:200].mean(0), features[200:].mean(0)], rtol=1e-5)
    assert precision.shape == (8, 8) and np.allclose(precision, precision.T, atol=1e-5)
    with pytest.raises(ValueError, match="every class"):
        fit_mahalanobis(features[:200], labels[:200], 2)


def test_ood_scorer_is_saved_with_the_weights(tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny")
    model = AutoModelForImageClassification.from_pretrained(model_dir)
    dim = model.asff_resnet.num_features
    rng = np.random.default_rng(3)
    means = rng.normal(size=(2, dim)).astype(np.float32)
    precision = (np.eye(dim) * rng.uniform(0.5, 2, dim)).astype(np.float32)
    attach_ood_scorer(model, means, precision)
    model.config.ood_threshold = 0.7
    pixels = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values=pixels)
    diff = out.pooler_output[:, None] - torch.from_numpy(means)[None]
    expected = (torch.einsum("bcd,de,bce->bc", diff, torch.from_numpy(precision), diff).min(1).values / dim).sqrt()
    torch.testing.assert_close(out.ood_score, expected)
    model.save_pretrained(tmp_path / "saved")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "saved")
    assert loaded.config.ood_method == "mahalanobis" and loaded.config.ood_threshold == 0.7
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels).ood_score, out.ood_score)
    # A float16 release keeps the statistics in float32.
    (tmp_path / "saved" / "preprocessor_config.json").write_text((model_dir / "preprocessor_config.json").read_text())
    release = export_half_precision(tmp_path / "saved", tmp_path / "release")
    with safe_open(release / "model.safetensors", "pt") as weights:
        dtypes = {key: weights.get_slice(key).get_dtype() for key in weights.keys()}
    assert dtypes["ood_scorer.precision"] == "F32" and dtypes["classifier.0.weight"] == "F16"
    assert (release / "pipeline_asff_resnet.py").is_file()


def test_config_validates_the_decision_settings():
    with pytest.raises(ValueError, match="decision_threshold"):
        AsffResNetConfig(decision_threshold=1.5)
    with pytest.raises(ValueError, match="temperature"):
        AsffResNetConfig(temperature=0.0)
    with pytest.raises(ValueError, match="ood_method"):
        AsffResNetConfig(ood_method="energy")
    with pytest.raises(ValueError, match="ood_pass_rate"):
        AsffResNetConfig(ood_pass_rate=1.0)


def test_synthetic_probe_images():
    images = synthetic_images(per_family=2, seed=0, size=64)
    assert len(images) == 2 * len(SYNTHETIC_FAMILIES) and all(image.mode == "RGB" for image in images.values())
    assert len(set(synthetic_image("flat", np.random.default_rng(0)).getdata())) == 1
    with pytest.raises(ValueError, match="unknown family"):
        synthetic_image("cats", np.random.default_rng(0))


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A tiny model calibrated on generated lesion images (train 24 per class, validation carved from it)."""
    root = tmp_path_factory.mktemp("calibrated")
    data = make_image_folder(root / "data", {"train": 24, "test": 8}, seed=5)
    model_dir = save_tiny_model(root / "model")
    card = ModelCard.from_template(ModelCardData(license="apache-2.0", decision_threshold=0.45),
                                   template_str="---\n{{ card_data }}\n---\n# Tiny\n")
    card.save(model_dir / "README.md")  # a model saved before the config held the threshold: card only
    config = json.loads((model_dir / "config.json").read_text())
    for key in ("decision_threshold", "temperature", "ood_method", "ood_threshold", "ood_pass_rate"):
        config.pop(key)
    (model_dir / "config.json").write_text(json.dumps(config))
    summary = calibrate_saved_model(model_dir, str(data), validation_fraction=0.25)
    return model_dir, data, summary


def test_calibrate_saved_model(calibrated):
    model_dir, _, summary = calibrated
    config = json.loads((model_dir / "config.json").read_text())
    assert config["temperature"] == pytest.approx(summary["temperature"]) and config["ood_method"] == "mahalanobis"
    # The legacy card threshold is kept as the same decisions on calibrated probabilities.
    assert summary["threshold_source"].startswith("model card")
    assert config["decision_threshold"] == pytest.approx(calibrated_threshold(0.45, summary["temperature"]))
    assert config["ood_threshold"] == pytest.approx(summary["ood_threshold"]) and config["ood_pass_rate"] == 0.95
    assert summary["validation_ece_after"] <= summary["validation_ece_before"] + 1e-6
    for name in ("pipeline_asff_resnet.py", "decision.py", "image_utils.py"):
        assert (model_dir / name).is_file()
    assert config["custom_pipelines"]["image-classification"]["impl"].startswith("pipeline_asff_resnet.")


def test_non_dermoscopic_images_are_flagged(calibrated):
    """Even a tiny untrained network's features separate generated lesions from noise, text, shapes, flat colours
    and gradients: most are flagged, few in-distribution test images are; flagged images are still classified."""
    model_dir, data, _ = calibrated
    model, processor, info = load_classifier(model_dir)
    assert info.ood_threshold is not None
    probes = synthetic_images(per_family=4, seed=1, size=64)
    results = [predict(model, processor, image) for image in probes.values()]
    assert np.mean([r.in_distribution is False for r in results]) >= 0.8
    assert all(sum(r.probabilities.values()) == pytest.approx(1, abs=1e-5) for r in results)  # classified anyway
    test_images = sorted((data / "test").rglob("*.jpg"))
    rows = predict_batch(model, processor, test_images)
    assert np.mean([row["in_distribution"] is False for row in rows]) <= 0.3
    assert all(isinstance(row["ood_score"], float) for row in rows)


def test_pipeline_uses_the_config_decision_rule(calibrated):
    model_dir, data, _ = calibrated
    model, processor, info = load_classifier(model_dir)
    classify = pipeline("image-classification", model=str(model_dir), trust_remote_code=True)
    for path in sorted((data / "test").rglob("*.jpg"))[:6]:
        expected = predict(model, processor, path)
        result = classify(str(path))
        assert result[0]["label"] == expected.label and result[0]["decision"] is True
        scores = {r["label"]: r["score"] for r in result}
        assert scores == pytest.approx(expected.probabilities, abs=1e-5)
        assert result[0]["in_distribution"] == expected.in_distribution
        assert result[0]["ood_score"] == pytest.approx(expected.ood_score, abs=1e-5)
    assert math.isfinite(info.temperature)
