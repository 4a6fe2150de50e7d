"""The image processor saved beside every model (`AsffResNetImageProcessor`): optional Shades-of-Gray colour
constancy, the square input (shortest edge + centre crop, or the whole image resized), ImageNet mean/std."""

from __future__ import annotations

from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .image_processing_asff_resnet import RESIZE_MODES, AsffResNetImageProcessor, interpolation_mode


def build_image_processor(image_size: int, color_constancy: bool = False, resize_mode: str = "crop",
                          color_constancy_power: float = 6.0, image_mean=IMAGENET_DEFAULT_MEAN,
                          image_std=IMAGENET_DEFAULT_STD, resample=None) -> AsffResNetImageProcessor:
    """`image_size` square input. Defaults: no colour constancy, shortest edge + centre crop, bicubic, ImageNet
    mean/std: the same pixels as the `ConvNextImageProcessor` (`crop_pct` 1) that older checkpoints saved."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    extra = {} if resample is None else {"resample": resample}
    return AsffResNetImageProcessor(
        size={"height": image_size, "width": image_size}, do_color_constancy=color_constancy,
        color_constancy_power=float(color_constancy_power), resize_mode=resize_mode, image_mean=list(image_mean),
        image_std=list(image_std), **extra)


def processor_settings(processor) -> dict:
    """What the training transforms need to reproduce a processor: `image_size`, `mean`, `std`, `resize_mode`,
    `interpolation` and `color_constancy_power` (None when off). Reads our processor and the
    `ConvNextImageProcessor` of older checkpoints (shortest edge < 384: resize + crop; >= 384: squash)."""
    size = processor.size
    resize_mode = getattr(processor, "resize_mode", None) or "crop"
    if getattr(size, "height", None):
        image_size = size.height
    else:
        image_size = size.shortest_edge
        if getattr(processor, "crop_pct", None) is not None and image_size >= 384:  # ConvNext warps at >= 384
            resize_mode = "squash"
    if getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None):
        image_size = processor.crop_size.height
    power = getattr(processor, "color_constancy_power", 6.0) if getattr(processor, "do_color_constancy", False) \
        else None
    return {"image_size": int(image_size), "mean": list(processor.image_mean), "std": list(processor.image_std),
            "resize_mode": resize_mode, "interpolation": interpolation_mode(getattr(processor, "resample", None)),
            "color_constancy_power": power}


def with_preprocessing(processor, color_constancy: bool | None = None, resize_mode: str | None = None,
                       image_size: int | None = None):
    """A processor like `processor` (same size, mean, std, resampling) with colour constancy, the resize mode and/or
    the input size changed; the processor itself when nothing changes. For fine-tuning a checkpoint with another
    preprocessing (a CNN takes any input size; its config's `image_size` should follow)."""
    settings = processor_settings(processor)
    current_cc = settings["color_constancy_power"] is not None
    if ((color_constancy is None or color_constancy == current_cc) and resize_mode in (None, settings["resize_mode"])
            and image_size in (None, settings["image_size"])):
        return processor
    return build_image_processor(
        image_size or settings["image_size"],
        color_constancy=current_cc if color_constancy is None else color_constancy,
        resize_mode=resize_mode or settings["resize_mode"],
        color_constancy_power=getattr(processor, "color_constancy_power", 6.0), image_mean=settings["mean"],
        image_std=settings["std"], resample=getattr(processor, "resample", None))
