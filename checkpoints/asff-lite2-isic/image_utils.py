"""Image files, the one home for them: finding them in folders, loading them with clear errors, and converting them
to RGB the same way for training, the app, the batch CLI and the pipeline."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MIN_IMAGE_SIDE = 16
ImageSource = str | Path | bytes | Image.Image


class ImageLoadError(ValueError):
    """An input that is not a usable image; the message is meant for the user."""


def find_images(folder: str | Path) -> list[Path]:
    """Image files (by suffix) under `folder`, recursively, sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def to_rgb(image: Image.Image) -> Image.Image:
    """EXIF-transposed 8-bit RGB: alpha composited on white, greyscale expanded, 16-bit/32-bit scaled to 8-bit
    (PIL's own convert would clip them to white), CMYK/palette converted."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def load_image(source: ImageSource, notes: list[str] | None = None) -> Image.Image:
    """Opens a file path, raw bytes or PIL image as an RGB PIL image (EXIF rotation applied).

    Raises `ImageLoadError` (a `ValueError`) with a message for the user on empty, non-image, truncated, tiny or
    oversized (decompression-bomb) input. Converts as training does (`image_utils.to_rgb`: alpha composited on white,
    high bit depth scaled to 8 bits, ...); each such conversion is described in `notes` when a list is given.
    """
    notes = notes if notes is not None else []
    name = Path(source).name if isinstance(source, str | Path) else "image"
    try:
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, bytes | bytearray):
            if not source:
                raise ImageLoadError("The file is empty (0 bytes).")
            image = Image.open(io.BytesIO(source))
        else:
            path = Path(source)
            if not path.is_file():
                raise ImageLoadError(f"{name}: file not found.")
            if path.stat().st_size == 0:
                raise ImageLoadError(f"{name}: the file is empty (0 bytes).")
            image = Image.open(path)
        _check_size(image, name)
        image.load()
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"{name}: the image is too large; it could be a decompression bomb ({error})") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image file, or a format that cannot be read.") from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise ImageLoadError(f"{name}: the image file is truncated or corrupt ({error}).") from None
    return _to_rgb(image, name, notes)


def _check_size(image: Image.Image, name: str) -> None:
    width, height = image.size
    # PIL raises a DecompressionBombError only beyond twice its limit and merely warns in between: refuse both.
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        raise ImageLoadError(
            f"{name}: the image is too large ({width}x{height} = {width * height} pixels, the limit is "
            f"{Image.MAX_IMAGE_PIXELS}); it could be a decompression bomb."
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageLoadError(f"{name}: the image is too small ({width}x{height} px; at least {MIN_IMAGE_SIDE} px).")


def _to_rgb(image: Image.Image, name: str, notes: list[str]) -> Image.Image:
    """The conversion training uses (`image_utils.to_rgb`), plus a note for the user on what it changed."""
    mode = image.mode
    try:
        rotated = image.getexif().get(ExifTags.Base.Orientation, 1) != 1
        rgb = to_rgb(image)
    except (ValueError, OSError, SyntaxError) as error:  # unsupported mode, malformed EXIF
        raise ImageLoadError(f"{name}: cannot convert this {mode} image to RGB ({error}).") from None
    if rotated:
        notes.append("The photo was rotated according to its EXIF orientation tag.")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        notes.append("The image's transparency (alpha channel) was composited on a white background.")
    elif mode.startswith("I") or mode == "F":
        notes.append(f"The {mode} (high bit depth) image was scaled to 8-bit greyscale.")
    elif mode in ("L", "1"):
        notes.append("The greyscale image was converted to RGB.")
    elif mode not in ("RGB", "P"):
        notes.append(f"The {mode} image was converted to RGB.")
    return rgb
