"""`AsffResNetImageProcessor` in numpy: the same pixels without torch or torchvision, for predictions on onnxruntime.

The app answers its first prediction before torch is imported (~5 s of imports), and onnxruntime needs nothing else:
so the graph's input is made here, from the directory's `preprocessor_config.json`. Every step is the processor's,
reproduced to the bit (tests/test_image_processing_numpy.py compares them on images of many sizes):

- Shades-of-Gray colour constancy (`shades_of_gray`), as `image_processing_asff_resnet.shades_of_gray` computes it;
- the resize: torchvision resizes uint8 images with an antialiased separable filter in fixed-point arithmetic (int16
  weights, the precision chosen per resize; ATen's `UpSampleKernel.cpp`, after Pillow-SIMD). Pillow's own resize
  uses other weights and differs by one grey level on ~0.5 % of pixels, so the filter is reimplemented here;
- the shortest-edge resize and centre crop (or the whole image squashed) of `fit_to_square`;
- the fused rescale + normalisation of transformers' processors (float32).

Self-contained (numpy and Pillow only, no relative imports), so that it can be imported without the `modeling`
package, whose `__init__` registers the models with transformers and so imports torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PROCESSOR_CONFIG = "preprocessor_config.json"
PROCESSOR_TYPE = "AsffResNetImageProcessor"
CONVNEXT_TYPE = "ConvNextImageProcessor"
# PIL resampling codes (what `resample` holds in a processor config) -> (filter, support of the unscaled filter).
BILINEAR, BICUBIC = 2, 3
RESIZE_MODES = ("crop", "squash")
_ROW_CHUNK = 512  # rows per step of the horizontal pass: bounds the gathered taps' memory on large photographs


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic with a = -0.5 (what ATen uses for antialiased bicubic, as Pillow does)."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _triangle(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


FILTERS = {BICUBIC: (_bicubic, 4), BILINEAR: (_triangle, 2)}  # filter, ATen's interp_size


def resize_weights(in_size: int, out_size: int, resample: int = BICUBIC) -> tuple[np.ndarray, np.ndarray, int]:
    """ATen's int16 antialiasing weights for one axis: (first input index per output (out,), int16-valued weights
    (out, taps) as int32, precision bits). Computed in float64 as ATen does (each row normalised by its sum taken in
    order), then scaled and rounded half away from zero."""
    if resample not in FILTERS:
        raise ValueError(f"resample {resample} not supported (bilinear {BILINEAR} or bicubic {BICUBIC})")
    filter_fn, interp_size = FILTERS[resample]
    scale = in_size / out_size
    support = interp_size * 0.5 * scale if scale >= 1.0 else interp_size * 0.5
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    taps = int(math.ceil(support)) * 2 + 1
    center = scale * (np.arange(out_size) + 0.5)
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)  # C casts truncate towards zero
    xsize = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    j = np.arange(taps)
    inside = j[None, :] < xsize[:, None]
    weights = np.where(inside, filter_fn((j[None, :] + xmin[:, None] - center[:, None] + 0.5) * invscale), 0.0)
    total = np.cumsum(weights, axis=1)[:, -1:]  # summed in order, as ATen's loop does
    weights = np.where(total != 0.0, weights / np.where(total != 0.0, total, 1.0), weights)
    wt_max = float(weights.max())
    precision = 0
    while precision < 22 and int(0.5 + wt_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    ints = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    return xmin, ints, precision


def _resize_axis(image: np.ndarray, out_size: int, axis: int, resample: int) -> np.ndarray:
    """One separable pass over `axis` (0: rows, 1: columns) of a uint8 (H, W, C) image, in integers (int32 cannot
    overflow: the weights' precision keeps 255 x their absolute sum below 2^31)."""
    in_size = image.shape[axis]
    xmins, weights, precision = resize_weights(in_size, out_size, resample)
    index = np.minimum(xmins[:, None] + np.arange(weights.shape[1]), in_size - 1)  # padded taps have weight 0
    moved = np.moveaxis(image, axis, 1)  # (rows, in_size, C)
    out = np.empty((moved.shape[0], out_size, moved.shape[2]), np.uint8)
    for start in range(0, moved.shape[0], _ROW_CHUNK):
        taps = moved[start : start + _ROW_CHUNK, index].astype(np.int32)  # (rows, out, taps, C)
        acc = np.einsum("rotc,ot->roc", taps, weights) + np.int32(1 << (precision - 1))
        out[start : start + _ROW_CHUNK] = np.clip(acc >> precision, 0, 255)
    return np.moveaxis(out, 1, axis)


def resize(image: np.ndarray, height: int, width: int, resample: int = BICUBIC) -> np.ndarray:
    """torchvision's `resize(uint8 tensor, antialias=True)` on CPU for a uint8 (H, W, C) array: horizontal pass, then
    vertical, each skipped when that size does not change."""
    if image.shape[:2] == (height, width):
        return image
    if image.shape[1] != width:
        image = _resize_axis(image, width, 1, resample)
    if image.shape[0] != height:
        image = _resize_axis(image, height, 0, resample)
    return image


def shades_of_gray(image: np.ndarray, power: float = 6.0) -> np.ndarray:
    """`image_processing_asff_resnet.shades_of_gray` for a uint8 (H, W, C) array (float64 illuminant, float32 gain):
    the p-th power mean from each channel's histogram, the gain applied through a 256-entry table of the same float32
    products."""
    if not power >= 1:
        raise ValueError(f"the Shades-of-Gray power must be >= 1 (1: grey world, inf: max-RGB), got {power}")
    channels = image.reshape(-1, image.shape[-1])
    levels = np.arange(256, dtype=np.float64) / 255.0
    if math.isinf(power):
        illuminant = channels.max(0).astype(np.float64) / 255.0
    else:
        counts = np.stack([np.bincount(channels[:, c], minlength=256) for c in range(channels.shape[1])])
        illuminant = ((counts @ np.power(levels, power)) / channels.shape[0]) ** (1.0 / power)
    length = float(np.sqrt((illuminant**2).sum()))
    gain = length / (np.maximum(illuminant, 1e-12) * math.sqrt(image.shape[-1])) if length > 0 else \
        np.ones_like(illuminant)
    table = np.rint(np.clip(np.arange(256, dtype=np.float32)[:, None] * gain.astype(np.float32), 0, 255))
    table = table.astype(np.uint8)  # (256, C): value v of channel c -> its corrected value
    corrected = np.empty_like(image)
    for c in range(image.shape[-1]):  # one table lookup per channel: ~4x faster than one fancy index over all
        np.take(table[:, c], image[..., c], out=corrected[..., c])
    return corrected


def fit_to_square(image: np.ndarray, size: int, mode: str = "crop", resample: int = BICUBIC) -> np.ndarray:
    """`image_processing_asff_resnet.fit_to_square` for a uint8 (H, W, C) array and a square `size`."""
    if mode == "squash":
        return resize(image, size, size, resample)
    if mode != "crop":
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    h, w = image.shape[:2]
    new = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    image = resize(image, *new, resample)
    h, w = image.shape[:2]
    top, left = int((h - size) / 2.0), int((w - size) / 2.0)
    return image[top : top + size, left : left + size]


@dataclass(frozen=True)
class NumpyImageProcessor:
    """The settings of a saved `AsffResNetImageProcessor` and its steps in numpy: `processor(image)` returns the
    (1, 3, S, S) float32 `pixel_values` the torch processor would."""

    image_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    resample: int = BICUBIC
    resize_mode: str = "crop"
    color_constancy_power: float | None = None  # None: off
    rescale_factor: float = 1 / 255

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> NumpyImageProcessor | None:
        """From a model directory's `preprocessor_config.json`; None when there is none, or it is not an
        `AsffResNetImageProcessor` with square output, rescaling and normalisation (then use the torch processor)."""
        path = Path(model_dir) / PROCESSOR_CONFIG
        if not path.is_file():
            return None
        config = json.loads(path.read_text())
        size = config.get("size") or {}
        if config.get("image_processor_type") == CONVNEXT_TYPE and config.get("crop_pct") == 1.0 \
                and size.get("shortest_edge"):
            # what older checkpoints saved: the same pixels as ours without colour constancy (see
            # `AsffResNetImageProcessor`); from 384 px on, ConvNext warps the whole image instead of cropping
            edge = int(size["shortest_edge"])
            size = {"height": edge, "width": edge}
            config = {**config, "size": size, "resize_mode": "crop" if edge < 384 else "squash",
                      "image_processor_type": PROCESSOR_TYPE, "do_color_constancy": False}
        if (config.get("image_processor_type") != PROCESSOR_TYPE or size.get("height") != size.get("width")
                or not size.get("height") or config.get("do_center_crop") or not config.get("do_resize", True)
                or not config.get("do_rescale", True) or not config.get("do_normalize", True)
                or config.get("resample", BICUBIC) not in FILTERS
                or config.get("resize_mode", "crop") not in RESIZE_MODES):
            return None
        return cls(
            image_size=int(size["height"]), image_mean=tuple(config["image_mean"]),
            image_std=tuple(config["image_std"]), resample=int(config.get("resample", BICUBIC)),
            resize_mode=config.get("resize_mode", "crop"),
            color_constancy_power=float(config.get("color_constancy_power", 6.0))
            if config.get("do_color_constancy") else None,
            rescale_factor=float(config.get("rescale_factor", 1 / 255)))

    def __call__(self, image: Image.Image | np.ndarray) -> np.ndarray:
        array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(f"expected an RGB image or a uint8 (H, W, 3) array, got {array.dtype} {array.shape}")
        if self.color_constancy_power is not None:
            array = shades_of_gray(array, self.color_constancy_power)
        array = fit_to_square(array, self.image_size, self.resize_mode, self.resample)
        # transformers fuses the rescale into the normalisation: (x - mean / f) / (std / f), in float32
        factor = np.float32(1.0 / self.rescale_factor)
        mean = np.asarray(self.image_mean, np.float32) * factor
        std = np.asarray(self.image_std, np.float32) * factor
        pixels = (array.astype(np.float32).transpose(2, 0, 1) - mean[:, None, None]) / std[:, None, None]
        return np.ascontiguousarray(pixels[None], dtype=np.float32)


__all__ = ["BICUBIC", "BILINEAR", "NumpyImageProcessor", "fit_to_square", "resize", "resize_weights",
           "shades_of_gray"]
