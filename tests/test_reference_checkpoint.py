"""The committed reference checkpoint: loads as float32 with remote code, and re-evaluating it on the real test
split reproduces the metrics its card records (issue: within 0.5 percentage points), and `python app.py` serves it."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from app_fixtures import free_port, served_client
from gradio_client import handle_file
from helpers import lesion_image
from huggingface_hub import ModelCard
from transformers import AutoModelForImageClassification

import modeling.training as training
from train_hf import parse_args

CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "asff-resnet50-isic2020"
pytestmark = pytest.mark.skipif(not (CHECKPOINT / "config.json").is_file(), reason="no reference checkpoint")


def test_loads_as_float32_with_card_metadata():
    model = AutoModelForImageClassification.from_pretrained(CHECKPOINT, trust_remote_code=True)
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.fusion_mode == "channel" and model.config.id2label == {0: "benign", 1: "malignant"}
    card = ModelCard.load(CHECKPOINT / "README.md")
    assert "NOT A DIAGNOSTIC DEVICE" in card.text and 0 < card.data.to_dict()["decision_threshold"] < 1
    # The model (weights, code, card, report) stays under 70 MB; its int8 ONNX graph (onnx/, issue 13) is a second
    # file of its own, also under 70 MB.
    files = [f for f in CHECKPOINT.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files if "onnx" not in f.relative_to(CHECKPOINT).parts) < 70e6
    assert all(f.stat().st_size < 70e6 for f in files)


# Its logits on fixed_pixels(), recorded with the code of commit aefff6a (a ResNetBackbone built directly, before
# the backbone became pluggable): the checkpoint must predict the same through the current code.
RECORDED_LOGITS = [[-7.399600505828857, 3.4813661575317383], [-4.71644926071167, 2.2099177837371826]]


def fixed_pixels() -> torch.Tensor:
    """Two smooth, RNG-free 224 px inputs in about [-1.5, 1.5] (the range of normalised images)."""
    y, x = torch.linspace(-1, 1, 224)[:, None], torch.linspace(-1, 1, 224)[None, :]
    a = torch.stack([torch.sin(3 * x + 2 * y), torch.cos(5 * x * y), x**2 - y])
    b = torch.stack([torch.cos(4 * y) * x, torch.sin(7 * x) * torch.sin(2 * y), (x + y) / 2])
    return torch.stack([a, b]) * 1.5


def test_predicts_as_recorded_through_the_current_code():
    from modeling import AsffResNetForImageClassification

    model, info = AsffResNetForImageClassification.from_pretrained(CHECKPOINT, output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    assert model.num_parameters() == 30_857_282 and model.asff_resnet.stage_channels == (1024, 2048)
    with torch.no_grad():
        logits = model.eval()(fixed_pixels()).logits
    torch.testing.assert_close(logits, torch.tensor(RECORDED_LOGITS), atol=1e-4, rtol=0)


def test_decision_rule_and_ood_detector_in_the_config():
    """Calibration and OOD statistics travel with the weights; non-dermoscopic images are flagged (measured on 50
    synthetic images: 98 %), and the pipeline's top label is the decision."""
    from transformers import pipeline

    from modeling.inference import load_classifier, predict
    from modeling.ood_probes import synthetic_images

    model, processor, info = load_classifier(CHECKPOINT)
    assert model.config.ood_method == "mahalanobis" and info.ood_threshold is not None
    assert 0.5 < info.decision_threshold < 1 and 0.5 < info.temperature < 2
    probes = synthetic_images(per_family=2, seed=0)
    results = [predict(model, processor, image) for image in probes.values()]
    assert sum(r.in_distribution is False for r in results) >= 9  # of 10
    classify = pipeline("image-classification", model=str(CHECKPOINT), trust_remote_code=True)
    image = lesion_image(1, np.random.default_rng(0), size=224)
    top = classify(image)[0]
    expected = predict(model, processor, image)
    assert top["label"] == expected.label and top["score"] == pytest.approx(
        expected.probabilities[expected.label], abs=1e-5)


@pytest.mark.slow
@pytest.mark.real_data
def test_eval_only_reproduces_recorded_test_metrics(real_data, tmp_path):
    recorded = json.loads((CHECKPOINT / "metrics.json").read_text())["test"]
    result = training.main(*parse_args(["--do_eval_only", "true", "--model_name_or_path", str(CHECKPOINT),
                                        "--dataset", str(real_data), "--output_dir", str(tmp_path),
                                        "--per_device_eval_batch_size", "64", "--disable_tqdm", "true"]))
    measured = result["test"]
    assert measured["n"] == recorded["n"] == 660
    assert measured["threshold"] == pytest.approx(recorded["threshold"])
    for name, value in recorded["metrics"].items():
        assert measured["metrics"][name] == pytest.approx(value, abs=0.005), name


@pytest.mark.slow
def test_app_without_arguments_serves_it(tmp_path):
    """`python app.py` (no arguments) serves the committed checkpoint; /predict answers with its threshold."""
    image = tmp_path / "lesion.jpg"
    lesion_image(1, np.random.default_rng(0), size=224).save(image)
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "app.py", "--port", str(port)]
    with served_client(command, CHECKPOINT.parents[1], env, port, tmp_path / "app.log") as client:
        threshold = ModelCard.load(CHECKPOINT / "README.md").data.to_dict()["decision_threshold"]
        probs, decision, _ = client.predict(handle_file(image), threshold, False, api_name="/predict")
        assert probs["label"] in ("benign", "malignant") and "Prediction" in decision
