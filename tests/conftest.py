"""Shared fixtures: generated images with a learnable rule and tiny models. Tests never read ../shared
(except tests marked `real_data`, which skip when it is absent). Plain helpers live in helpers.py."""

from pathlib import Path

import pytest
from helpers import REAL_DATA, TINY_IMAGE_SIZE, make_image_folder, tiny_config

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
def real_data() -> Path:
    if not (REAL_DATA / "train").is_dir():
        pytest.skip(f"real data set not found at {REAL_DATA}")
    return REAL_DATA
