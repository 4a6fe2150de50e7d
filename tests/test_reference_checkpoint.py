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
from helpers import lesion_image
from gradio_client import handle_file
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
    assert sum(f.stat().st_size for f in CHECKPOINT.rglob("*")) < 70e6


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
