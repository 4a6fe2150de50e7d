"""`pipeline("image-classification", model=..., trust_remote_code=True)` with the model's own decision rule.

transformers' image-classification pipeline sorts labels by the raw softmax; this one (registered in each saved
model's `config.custom_pipelines`, its file shipped beside the weights) returns calibrated probabilities
(`config.temperature`), puts the decided class first (`config.decision_threshold`, the rule of `modeling.decision`),
and adds the out-of-distribution flag when the model computes one. So the pipeline's top label is always the app's and
the batch CLI's decision.

Self-contained apart from its relative imports (shipped with it): decision.py and image_utils.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import ImageClassificationPipeline
from transformers.image_utils import load_image as load_remote_image

from .decision import calibrated_probabilities, decide, decision_threshold, temperature
from .image_utils import load_image, to_rgb

PIPELINE_TASK = "image-classification"
PIPELINE_FILES = ("pipeline_asff_resnet.py", "decision.py", "image_utils.py")


class AsffImageClassificationPipeline(ImageClassificationPipeline):
    """Each result: `[{"label", "score", "decision", "in_distribution", "ood_score"}, ...]`, the decided label first
    (`decision` True), the other labels by descending calibrated probability. `in_distribution`/`ood_score` are None
    for models without an OOD score."""

    def preprocess(self, image, timeout=None):
        if isinstance(image, str) and image.startswith(("http://", "https://")):
            image = to_rgb(load_remote_image(image, timeout=timeout))
        elif isinstance(image, str | Path | bytes | Image.Image):
            image = load_image(image)  # the project's loading: clear errors, the same RGB conversion as training
        model_inputs = self.image_processor(images=image, return_tensors="pt")
        return model_inputs.to(self.dtype)

    def postprocess(self, model_outputs, function_to_apply=None, top_k=5) -> list[dict[str, Any]]:
        config = self.model.config
        probs = calibrated_probabilities(model_outputs["logits"][0].float(), temperature(config))
        chosen = decide(probs, decision_threshold(config))
        order = [chosen] + [int(i) for i in torch.argsort(probs, descending=True) if int(i) != chosen]
        score = model_outputs.get("ood_score")
        threshold = getattr(config, "ood_threshold", None)
        ood_score = None if score is None else float(score[0])
        in_distribution = None if ood_score is None or threshold is None else bool(ood_score <= threshold)
        top_k = len(order) if top_k is None else min(top_k, len(order))
        return [{"label": config.id2label[i], "score": float(probs[i]), "decision": i == chosen,
                 "in_distribution": in_distribution, "ood_score": ood_score} for i in order[:top_k]]


def add_pipeline_to(model_dir: str | Path) -> None:
    """Ships this pipeline with a saved model directory: copies its files and registers it in `config.json`
    (`custom_pipelines`), so `pipeline("image-classification", model=model_dir, trust_remote_code=True)` uses it."""
    import json

    model_dir = Path(model_dir)
    here = Path(__file__).resolve().parent
    for name in PIPELINE_FILES:
        shutil.copyfile(here / name, model_dir / name)
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["custom_pipelines"] = {PIPELINE_TASK: {
        "impl": "pipeline_asff_resnet.AsffImageClassificationPipeline",
        "pt": ["AutoModelForImageClassification"],
        "type": "image",
    }}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


__all__ = ["AsffImageClassificationPipeline", "PIPELINE_FILES", "add_pipeline_to"]
