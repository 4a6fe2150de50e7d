"""Shared fixtures: generated images with a learnable rule and tiny models. Tests never read ../shared
(except tests marked `real_data`, which skip when it is absent). Plain helpers live in helpers.py."""

from pathlib import Path

import numpy as np
import pytest
from helpers import REAL_DATA, TINY_IMAGE_SIZE, lesion_image, make_image_folder, tiny_config

from modeling import AsffResNetForImageClassification
from modeling.image_processing import build_image_processor


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """train: 16 per class, test: 6 per class (a few dozen images)."""
    return make_image_folder(tmp_path_factory.mktemp("images"), {"train": 16, "test": 6})


@pytest.fixture(scope="session", params=["channel", "spatial", "none"])
def fusion_mode(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny channel-mode model with its image processor (untrained, seeded)."""
    import torch

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_model")
    model = AsffResNetForImageClassification(tiny_config("channel"))
    model.save_pretrained(out)
    build_image_processor(TINY_IMAGE_SIZE).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def loaded(tmp_path_factory):
    """{fusion_mode: (model, processor, info)} for tiny saved models of every mode, loaded for inference."""
    from app_fixtures import save_tiny_model

    from modeling.inference import load_classifier

    root = tmp_path_factory.mktemp("inference_models")
    return {mode: load_classifier(save_tiny_model(root / mode, mode)) for mode in ("channel", "spatial", "none")}


@pytest.fixture(scope="module")
def image():
    """One generated malignant-rule lesion image, 48 px."""
    return lesion_image(1, np.random.default_rng(3), size=48)


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / "train").is_dir():
        pytest.skip(f"real data set not found at {REAL_DATA}")
    return REAL_DATA
