"""Generated lesion-like images with a learnable rule, for tests, benchmarks and smoke runs (no real data needed).

    from modeling.synthetic import make_image_folder
    make_image_folder(Path("tiny"), {"train": 16, "test": 6})   # tiny/<split>/<label>/<i>.jpg
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


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
    """Writes `<root>/<split>/<label>/<i>.jpg`, `counts[split]` images per label (the first label benign-looking,
    every other one malignant-looking)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for index, label in enumerate(labels):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                lesion_image(min(index, 1), rng, size).save(folder / f"{i}.jpg", quality=90)
    return root
