"""Shared test helpers (plain functions and constants; the fixtures built on them are in conftest.py). Tests import
from here, never from conftest: `from helpers import tiny_config`."""

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from modeling import AsffResNetConfig
from modeling.synthetic import lesion_image, make_image_folder

__all__ = ["ROOT", "REAL_DATA", "TINY_IMAGE_SIZE", "TINY_TRAIN_ARGS", "lesion_image", "make_image_folder",
           "offline_env", "skin_with_lesion", "tiny_config"]

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "isic2020-part"
TINY_IMAGE_SIZE = 32
# train_hf.py options that keep a run on generated images to seconds (add --config_name with a tiny config).
TINY_TRAIN_ARGS = ["--image_size", str(TINY_IMAGE_SIZE), "--per_device_train_batch_size", "8",
                   "--per_device_eval_batch_size", "16", "--disable_tqdm", "true", "--dataloader_num_workers", "0"]


def tiny_config(fusion_mode: str = "channel", **kwargs) -> AsffResNetConfig:
    """A four-stage ResNet a few thousand parameters wide: same code paths, milliseconds per step."""
    backbone = {
        "layer_type": "basic",
        "depths": [1, 1, 1, 1],
        "hidden_sizes": [8, 16, 24, 32],
        "embedding_size": 8,
        "out_features": ["stage3", "stage4"],
    }
    kwargs = {"fusion_hidden_size": 16, "head_hidden_size": 16, "image_size": TINY_IMAGE_SIZE, **kwargs}
    return AsffResNetConfig(backbone_config=backbone, fusion_mode=fusion_mode, **kwargs)


def offline_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess of the project: offline Hub and datasets, this repository importable."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1", **extra}


def skin_with_lesion(size: int = 224, centre=(112, 112), radius: int = 50, vignette: bool = False,
                     hair: bool = False, field: float = 1.1) -> tuple[np.ndarray, np.ndarray]:
    """A skin-coloured image with a dark elliptical lesion (and optionally a dermoscope's black surround outside a
    centred circle of diameter `field` x size, and a hair line), and the lesion's true mask."""
    image = Image.new("RGB", (size, size), (205, 165, 150))
    draw = ImageDraw.Draw(image)
    cx, cy = centre
    box = [cx - radius, cy - 0.8 * radius, cx + radius, cy + 0.8 * radius]
    draw.ellipse(box, fill=(95, 60, 55))
    truth = Image.new("L", (size, size), 0)
    ImageDraw.Draw(truth).ellipse(box, fill=1)
    if vignette:  # a dermoscope's dark circular frame: everything outside a circle is black
        outside = Image.new("L", (size, size), 255)
        margin = size * (1 - field) / 2
        ImageDraw.Draw(outside).ellipse([margin, margin, size - margin, size - margin], fill=0)
        image.paste((5, 5, 5), mask=outside)
    if hair:
        draw.line([(0, size * 0.2), (size, size * 0.9)], fill=(40, 30, 30), width=2)
    return np.asarray(image), np.asarray(truth, dtype=bool)
