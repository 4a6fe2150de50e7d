"""Images that are not dermoscopy, for measuring the out-of-distribution flag: five synthetic families made here
(noise, flat colours, rendered text, geometric shapes, photo-like gradients) and, when scikit-image is installed, the
photographs it ships (an astronaut, a rocket, a cup of coffee, a cat, a page of text, ...)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SYNTHETIC_FAMILIES = ("noise", "flat", "text", "shapes", "gradient")
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "checkerboard", "clock", "coffee", "coins", "colorwheel", "grass",
                  "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon",
                  "page", "retina", "rocket", "text", "chelsea", "binary_blobs")


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def synthetic_image(family: str, rng: np.random.Generator, size: int = 224) -> Image.Image:
    """One image of a synthetic family (see SYNTHETIC_FAMILIES)."""
    if family == "noise":
        return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    if family == "flat":
        return Image.new("RGB", (size, size), _colour(rng))
    if family == "text":
        image = Image.new("RGB", (size + size // 3, size), "white")
        draw = ImageDraw.Draw(image)
        for line in range(size // 24):
            words = " ".join(str(w) for w in rng.integers(0, 10_000, 5))
            draw.text((8, 8 + 22 * line), f"The quick brown fox {words}", fill="black")
        return image
    if family == "shapes":
        image = Image.new("RGB", (size, size), _colour(rng))
        draw = ImageDraw.Draw(image)
        for _ in range(5):
            x, y = rng.integers(0, size - 40, 2)
            w, h = rng.integers(20, size // 3, 2)
            shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
            shape([int(x), int(y), int(x + w), int(y + h)], fill=_colour(rng))
        return image
    if family == "gradient":
        ramp = np.linspace(0, 1, size)
        channels = [np.outer(ramp, np.ones(size)) * rng.uniform(100, 255),
                    np.outer(np.ones(size), ramp) * rng.uniform(100, 255), np.full((size, size), rng.uniform(0, 255))]
        return Image.fromarray(np.stack(channels, -1).astype(np.uint8))
    raise ValueError(f"unknown family {family!r}; one of {', '.join(SYNTHETIC_FAMILIES)}")


def synthetic_images(per_family: int = 10, seed: int = 0, size: int = 224) -> dict[str, Image.Image]:
    """{"<family>_<i>": image}, `per_family` of each synthetic family."""
    rng = np.random.default_rng(seed)
    return {f"{family}_{i}": synthetic_image(family, rng, size) for family in SYNTHETIC_FAMILIES
            for i in range(per_family)}


def skimage_photos() -> dict[str, Image.Image]:
    """The photographs scikit-image ships ({} when it is not installed)."""
    try:
        from skimage import data
    except ImportError:
        return {}
    return {name: Image.fromarray(getattr(data, name)()) for name in SKIMAGE_PHOTOS}


__all__ = ["SKIMAGE_PHOTOS", "SYNTHETIC_FAMILIES", "skimage_photos", "synthetic_image", "synthetic_images"]
