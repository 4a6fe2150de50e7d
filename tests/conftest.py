"""Shared fixtures: generated images with a learnable rule and tiny models. Tests never read ../shared
(except tests marked `real_data`, which skip when it is absent)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from modeling import AsffResNetConfig, AsffResNetForImageClassification
from modeling.image_processing import build_image_processor

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isic2020-part"
TINY_IMAGE_SIZE = 32


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


def lesion_image(label: int, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """Skin-coloured background with one blob. The rule to learn: malignant (1) blobs are large and dark,
    benign (0) blobs small and light; position and exact colour vary."""
    background = tuple(int(c) for c in rng.integers(170, 230, 3))
    image = Image.new("RGB", (size, size), background)
    radius = size * (rng.uniform(0.28, 0.4) if label else rng.uniform(0.1, 0.18))
    shade = int(rng.integers(20, 70)) if label else int(rng.integers(120, 160))
    cx, cy = rng.uniform(0.35, 0.65, 2) * size
    ImageDraw.Draw(image).ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=(shade + 30, shade, shade))
    return image


def make_image_folder(root: Path, counts: dict[str, int], labels=("benign", "malignant"), seed: int = 0,
                      size: int = 48) -> Path:
    """Writes `<root>/<split>/<label>/<i>.jpg`, `counts[split]` images per label."""
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for index, label in enumerate(labels):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                lesion_image(min(index, 1), rng, size).save(folder / f"{i}.jpg", quality=90)
    return root


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
