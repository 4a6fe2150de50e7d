"""The image processor saved beside ASFF-ResNet models: optional Shades-of-Gray colour constancy, the square input
(shortest edge + centre crop, or the whole image resized), ImageNet normalisation.

Self-contained (no relative imports): `save_pretrained` ships this file beside the weights, and
`AutoImageProcessor.from_pretrained(dir, trust_remote_code=True)` loads it where this package is not installed.
`shades_of_gray` and `fit_to_square` are also what the training transforms (`modeling.data.build_transforms`) call,
so training, evaluation, the app, the CLI and `pipeline()` apply the same steps.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as tvF
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    PILImageResampling,
    SizeDict,
    pil_torch_interpolation_mapping,
)
from transformers.processing_utils import ImagesKwargs, Unpack

RESIZE_MODES = ("crop", "squash")


def shades_of_gray(image: torch.Tensor, power: float = 6.0) -> torch.Tensor:
    """Shades-of-Gray colour constancy (Finlayson & Trezzi 2004), the usual ISIC preprocessing with `power` 6.

    The illuminant of each channel is the Minkowski p-norm of its pixel values, (mean x^p)^(1/p); every channel is
    scaled so that the illuminant becomes grey (all channels equal, the vector's length kept). `power` 1 is Grey
    World, `math.inf` is max-RGB. `image`: uint8 (..., C, H, W), values 0-255; returns uint8 of the same shape
    (clipped, rounded). A channel that is black everywhere stays black."""
    if image.dtype != torch.uint8:
        raise TypeError(f"shades_of_gray expects a uint8 image tensor, got {image.dtype}")
    if not power >= 1:
        raise ValueError(f"the Shades-of-Gray power must be >= 1 (1: grey world, inf: max-RGB), got {power}")
    if math.isinf(power):
        illuminant = image.flatten(-2).amax(-1).to(torch.float64) / 255.0
    else:
        # The power mean from each channel's 256-bin histogram, in float64: the same sums as numpy's twin
        # (image_processing_numpy.py), and ~3x faster than raising every pixel of a photograph to the power.
        channels = image.reshape(-1, image.shape[-2] * image.shape[-1])
        counts = torch.stack([torch.bincount(channel, minlength=256) for channel in channels]).to(torch.float64)
        levels = torch.arange(256, dtype=torch.float64) / 255.0
        illuminant = ((counts @ levels.pow(power)) / channels.shape[1]).pow(1.0 / power)
        illuminant = illuminant.reshape(image.shape[:-2])  # (..., C)
    length = illuminant.norm(dim=-1, keepdim=True)
    gain = length / (illuminant.clamp_min(1e-12) * math.sqrt(image.shape[-3]))
    gain = torch.where(length > 0, gain, torch.ones_like(gain))  # an all-black image stays as it is
    corrected = image.to(torch.float32) * gain.to(torch.float32)[..., None, None]
    return corrected.clamp_(0, 255).round_().to(torch.uint8)


def fit_to_square(image: torch.Tensor, size: int | tuple[int, int], mode: str = "crop",
                  interpolation: tvF.InterpolationMode = tvF.InterpolationMode.BICUBIC) -> torch.Tensor:
    """Brings an image (..., C, H, W) to the model's input size. `crop`: the shortest edge to `size` (aspect kept),
    then a centre crop (what transformers' processors do, the same pixel offsets); `squash`: the whole image
    resized to `size` x `size` (aspect not kept, nothing cut off)."""
    height, width = (size, size) if isinstance(size, int) else size
    if mode == "squash":
        return tvF.resize(image, [height, width], interpolation=interpolation, antialias=True)
    if mode != "crop":
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    h, w = image.shape[-2:]
    short = min(height, width)
    new = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    if new != (h, w):
        image = tvF.resize(image, list(new), interpolation=interpolation, antialias=True)
    h, w = image.shape[-2:]
    if height > h or width > w:  # a non-square target larger than the resized image: pad with black, centred
        pad_w, pad_h = max(width - w, 0), max(height - h, 0)
        image = tvF.pad(image, [pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2], fill=0)
        h, w = image.shape[-2:]
    return tvF.crop(image, int((h - height) / 2.0), int((w - width) / 2.0), height, width)


def interpolation_mode(resample) -> tvF.InterpolationMode:
    """A processor's `resample` (PIL code or torchvision mode) as a torchvision interpolation mode."""
    if resample is None:
        return tvF.InterpolationMode.BILINEAR
    if isinstance(resample, tvF.InterpolationMode):
        return resample
    return pil_torch_interpolation_mapping[PILImageResampling(resample)]


class AsffResNetImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_color_constancy (`bool`, *optional*, defaults to `self.do_color_constancy`):
        Apply Shades-of-Gray colour constancy to each image first (on the whole image, before resizing).
    color_constancy_power (`float`, *optional*, defaults to `self.color_constancy_power`):
        The Minkowski norm of Shades of Gray (6: the usual ISIC preprocessing; 1: grey world).
    resize_mode (`str`, *optional*, defaults to `self.resize_mode`):
        `"crop"`: shortest edge to the size, then a centre crop; `"squash"`: the whole image resized to the size.
    """

    do_color_constancy: bool
    color_constancy_power: float
    resize_mode: str


class AsffResNetImageProcessor(TorchvisionBackend):
    """Colour constancy (optional, off by default) → square input (`resize_mode`) → rescale → normalise.

    `size` is the output (`{"height": S, "width": S}`). With colour constancy off and `resize_mode="crop"` it gives
    the same pixels as the `ConvNextImageProcessor` (`shortest_edge` S, `crop_pct` 1) that older checkpoints
    saved."""

    valid_kwargs = AsffResNetImageProcessorKwargs
    model_input_names = ["pixel_values"]

    resample = PILImageResampling.BICUBIC
    image_mean = list(IMAGENET_DEFAULT_MEAN)
    image_std = list(IMAGENET_DEFAULT_STD)
    size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = False  # the crop (if any) is part of `resize_mode`
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    do_color_constancy = False
    color_constancy_power = 6.0
    resize_mode = "crop"

    def __init__(self, **kwargs: Unpack[AsffResNetImageProcessorKwargs]):
        super().__init__(**kwargs)
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")

    def _preprocess(
        self,
        images: list[torch.Tensor],
        do_resize: bool,
        size: SizeDict,
        resample,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        return_tensors=None,
        do_color_constancy: bool = False,
        color_constancy_power: float = 6.0,
        resize_mode: str = "crop",
        **kwargs,
    ) -> BatchFeature:
        processed = []
        for image in images:
            if do_color_constancy:
                image = shades_of_gray(image, color_constancy_power)
            if do_resize:
                target = (size.height, size.width) if size.height else (size.shortest_edge, size.shortest_edge)
                image = fit_to_square(image, target, resize_mode, interpolation_mode(resample))
            if do_center_crop:
                image = self.center_crop(image, crop_size)
            processed.append(self.rescale_and_normalize(image[None], do_rescale, rescale_factor, do_normalize,
                                                        image_mean, image_std)[0])
        return BatchFeature(data={"pixel_values": processed}, tensor_type=return_tensors)


__all__ = ["RESIZE_MODES", "AsffResNetImageProcessor", "fit_to_square", "interpolation_mode", "shades_of_gray"]
