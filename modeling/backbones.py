"""Pretrained weights for the ResNet backbone of an ASFF-ResNet: a transformers ResNet checkpoint (Hub id or
directory, e.g. `microsoft/resnet-50`) loads as is; a torchvision ResNet state dict (`.pth`, `.pt`,
`.safetensors`) loads through one key map. Either way the whole backbone must be covered, or nothing is loaded."""

import logging
import re
from pathlib import Path

import torch
from torch import nn
from transformers import ResNetBackbone, ResNetConfig

logger = logging.getLogger(__name__)

TORCHVISION_SUFFIXES = (".pth", ".pt", ".safetensors")
# What must agree between the checkpoint's ResNet and ours for its weights to mean the same thing.
LAYOUT_FIELDS = ("layer_type", "depths", "hidden_sizes", "embedding_size", "num_channels", "hidden_act",
                 "downsample_in_first_stage", "downsample_in_bottleneck")
_STEM = re.compile(r"(conv|bn)1\.(.+)")
_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.(?:(conv|bn)(\d+)|downsample\.([01]))\.(.+)")
_SHOWN = 5


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
    """Loads pretrained ResNet weights into `model`'s backbone (an `AsffResNetForImageClassification`, an
    `AsffResNetModel` or a `ResNetBackbone`). `source` is a torchvision state-dict file (by its suffix) or else a
    transformers ResNet checkpoint: a Hub id or a directory of a saved ResNetModel, ResNetForImageClassification or
    ResNetBackbone. Raises ValueError if the layouts differ or any tensor is missing, unexpected or misshapen."""
    backbone = _find_backbone(model)
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


def _find_backbone(model: nn.Module) -> ResNetBackbone:
    for candidate in (getattr(getattr(model, "asff_resnet", None), "backbone", None),
                      getattr(model, "backbone", None), model):
        if isinstance(candidate, ResNetBackbone):
            return candidate
    raise TypeError(f"{type(model).__name__} has no ResNetBackbone at .asff_resnet.backbone or .backbone")


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


__all__ = ["load_pretrained_backbone", "torchvision_to_transformers_key"]
