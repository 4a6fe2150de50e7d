"""Classic CNN baselines from torchvision, wrapped as transformers models so that the same Trainer pipeline, report,
model card and `from_pretrained(..., trust_remote_code=True)` loading serve them and ASFF-ResNet alike.

`BASELINE_ARCHITECTURES`: the five classic CNNs the paper (arXiv 2510.03876) compares against (DenseNet-121,
MobileNetV2, EfficientNet-B0, VGG-16, Inception-v3), plus torchvision's ResNet-50 as a sanity reference: the same
backbone as ASFF-ResNet-50 without fusion or MLP head, from an independent implementation. All are built with
`weights=None` (no pretrained weights can be downloaded here) and keep torchvision's own initialisation.

Self-contained (imports only torch, torchvision and transformers): `save_pretrained` ships this file as remote code.
"""

import math

import torch
import torchvision
from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification
from transformers import initialization as init
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.modeling_utils import PreTrainedModel

BASELINE_ARCHITECTURES = ("densenet121", "mobilenet_v2", "efficientnet_b0", "vgg16", "inception_v3", "resnet50")
# torchvision builders that take a `dropout` argument (before their last linear layer).
ARCHITECTURES_WITH_DROPOUT = ("mobilenet_v2", "efficientnet_b0", "vgg16", "inception_v3")
# Inception-v3's stem and reduction blocks need at least 75 px; the others downsample by 32.
MIN_IMAGE_SIZE = {"inception_v3": 75}
DEFAULT_MIN_IMAGE_SIZE = 32
DEFAULT_ID2LABEL = {0: "benign", 1: "malignant"}


class TorchvisionClassifierConfig(PreTrainedConfig):
    r"""
    architecture (`str`, *optional*, defaults to `"resnet50"`):
        The torchvision classification model, one of `BASELINE_ARCHITECTURES`.
    image_size (`int`, *optional*, defaults to 224):
        Input resolution the model is trained and served at (also written into the image processor); at least 75
        for Inception-v3, 32 for the others.
    dropout (`float`, *optional*):
        Dropout before the classifier for the architectures that have one (MobileNetV2, EfficientNet-B0, VGG-16,
        Inception-v3). `None` keeps torchvision's default.
    """

    model_type = "torchvision_classifier"

    architecture: str = "resnet50"
    image_size: int = 224
    dropout: float | None = None

    def __post_init__(self, **kwargs):
        if self.id2label is None and kwargs.get("num_labels") in (None, 2):
            self.id2label = dict(DEFAULT_ID2LABEL)
            self.label2id = {v: k for k, v in DEFAULT_ID2LABEL.items()}
        super().__post_init__(**kwargs)
        if self.architecture not in BASELINE_ARCHITECTURES:
            raise ValueError(
                f"architecture={self.architecture!r} is not one of {', '.join(BASELINE_ARCHITECTURES)}"
            )
        min_size = MIN_IMAGE_SIZE.get(self.architecture, DEFAULT_MIN_IMAGE_SIZE)
        if self.image_size < min_size:
            raise ValueError(f"{self.architecture} needs image_size >= {min_size}, got {self.image_size}")
        if self.dropout is not None:
            if self.architecture not in ARCHITECTURES_WITH_DROPOUT:
                choices = ", ".join(ARCHITECTURES_WITH_DROPOUT)
                raise ValueError(f"{self.architecture} has no classifier dropout; dropout is for {choices}")
            if not 0.0 <= self.dropout < 1.0:
                raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def build_torchvision_model(config: TorchvisionClassifierConfig) -> nn.Module:
    """The torchvision network of `config`: random weights, `num_labels` outputs, Inception-v3 without its auxiliary
    classifier (a training-only second head that would make the output a tuple)."""
    kwargs = {}
    if config.dropout is not None:
        kwargs["dropout"] = config.dropout
    if config.architecture == "inception_v3":
        kwargs.update(aux_logits=False, init_weights=True)  # init_weights: torchvision's scheme, without a warning
    return torchvision.models.get_model(config.architecture, weights=None, num_classes=config.num_labels, **kwargs)


class TorchvisionForImageClassification(PreTrainedModel):
    """A torchvision classification network with transformers' interface: `forward(pixel_values, labels)` returns
    an `ImageClassifierOutput` (loss when labels are given)."""

    config: TorchvisionClassifierConfig
    config_class = TorchvisionClassifierConfig
    base_model_prefix = "torchvision_model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: TorchvisionClassifierConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.torchvision_model = build_torchvision_model(config)
        # torchvision has just initialised every module with its own per-architecture scheme; mark them so that
        # `post_init` leaves them alone. Not on the meta device: there `from_pretrained` is building an empty
        # model, and whatever the checkpoint lacks must go through `_init_weights`.
        if not any(p.is_meta for p in self.torchvision_model.parameters()):
            for module in self.torchvision_model.modules():
                module._is_hf_initialized = True
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Only reached by modules `from_pretrained` found no weights for (e.g. a new head with
        # `ignore_mismatched_sizes=True`): torchvision's ResNet scheme (He-normal convs, PyTorch's default linear).
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices for the cross-entropy loss (`problem_type` is inferred as in transformers' classifiers).
        """
        if pixel_values is None:
            raise ValueError("pixel_values is required")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        logits = self.torchvision_model(pixel_values)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        output = ImageClassifierOutput(loss=loss, logits=logits)
        return output if return_dict else output.to_tuple()


def build_baseline(
    architecture: str, num_labels: int, id2label: dict, image_size: int
) -> TorchvisionForImageClassification:
    """A randomly initialised torchvision baseline; `ValueError` for an architecture outside
    `BASELINE_ARCHITECTURES`."""
    if architecture not in BASELINE_ARCHITECTURES:
        raise ValueError(f"unknown baseline {architecture!r}; choose one of {', '.join(BASELINE_ARCHITECTURES)}")
    id2label = {int(k): v for k, v in id2label.items()}
    if len(id2label) != num_labels:
        raise ValueError(f"num_labels={num_labels} but id2label has {len(id2label)} entries")
    config = TorchvisionClassifierConfig(
        architecture=architecture,
        image_size=image_size,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    return TorchvisionForImageClassification(config)


# Register with the Auto classes and mark for `save_pretrained` to ship this file, as the package does for ASFF.
# Skipped in the remote-code copy (module `transformers_modules.*`): transformers registers the classes it loads
# itself, and re-registering there would point the Auto classes of a process that also imports this package at
# the copy.
if not __name__.startswith("transformers_modules."):
    AutoConfig.register(TorchvisionClassifierConfig.model_type, TorchvisionClassifierConfig, exist_ok=True)
    AutoModelForImageClassification.register(
        TorchvisionClassifierConfig, TorchvisionForImageClassification, exist_ok=True
    )
    TorchvisionClassifierConfig.register_for_auto_class()
    TorchvisionForImageClassification.register_for_auto_class("AutoModelForImageClassification")


__all__ = [
    "BASELINE_ARCHITECTURES",
    "TorchvisionClassifierConfig",
    "TorchvisionForImageClassification",
    "build_baseline",
]
