"""The image processor saved beside every model: transformers' own resize + centre crop + ImageNet normalisation."""

from transformers import ConvNextImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def build_image_processor(image_size: int, image_mean=IMAGENET_DEFAULT_MEAN,
                          image_std=IMAGENET_DEFAULT_STD) -> ConvNextImageProcessor:
    """Shortest edge to `image_size`, centre crop to a square, ImageNet mean/std unless the pretrained weights want
    another (crop_pct=1: no zoom)."""
    return ConvNextImageProcessor(
        size={"shortest_edge": image_size},
        crop_pct=1.0,
        image_mean=list(image_mean),
        image_std=list(image_std),
    )
