"""Configuration of ASFF-ResNet: a backbone whose last two stages (by default a transformers ResNet-50's stage3 and
stage4) are fused with learned weights (arXiv 2510.03876) before an MLP classification head."""

from typing import ClassVar

from transformers import ResNetConfig, TimmBackboneConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

FUSION_MODES = ("channel", "spatial", "none")
OOD_METHODS = ("mahalanobis",)
OOD_FEATURES = ("pooled", "stages")
DEFAULT_ID2LABEL = {0: "benign", 1: "malignant"}
# The layout of `microsoft/resnet-50`, so its weights load without conversion.
RESNET50_BACKBONE = {
    "layer_type": "bottleneck",
    "depths": [3, 4, 6, 3],
    "hidden_sizes": [256, 512, 1024, 2048],
    "embedding_size": 64,
    "out_features": ["stage3", "stage4"],
}
# A timm backbone fuses its last two feature stages unless `out_indices` says otherwise.
TIMM_OUT_INDICES = [-2, -1]


class AsffResNetConfig(PreTrainedConfig):
    r"""
    backbone_config (`ResNetConfig`, `TimmBackboneConfig` or `dict`, *optional*):
        The backbone. Defaults to the ResNet-50 layout (transformers' `ResNetBackbone`); `out_features` must name the
        two stages to fuse (low level first), by default `["stage3", "stage4"]`. Any transformers backbone config
        works the same way; a `TimmBackboneConfig` (transformers' `TimmBackbone`, needs `timm`) fuses the two feature
        stages its `out_indices` select, by default the last two (`[-2, -1]`). Channel counts and strides are read
        from the built backbone (`AsffResNetModel.stage_channels`, `.stage_reductions`).
    backbone (`str`, *optional*):
        Shorthand for a timm backbone, e.g. `"tf_efficientnet_lite0"`: the same as
        `backbone_config=TimmBackboneConfig(backbone=..., out_indices=[-2, -1])`. Not stored: the config keeps
        `backbone_config`.
    fusion_mode (`str`, *optional*, defaults to `"channel"`):
        `"channel"`: the paper's code, one softmax weight per channel from the pooled concatenation of both levels.
        `"spatial"`: the original ASFF (Liu et al. 2019), a softmax over the two levels at every pixel.
        `"none"`: plain ResNet, the high-level stage only, the same head (the baseline).
    fusion_channels (`int`, *optional*):
        Channels the high-level stage is projected to. Defaults to the low-level stage's channels (1024 for
        ResNet-50; for a timm backbone, filled in when the model is built).
    fusion_hidden_size (`int`, *optional*, defaults to 1024):
        Hidden width of the channel-weight MLP (`"channel"` mode).
    spatial_compress_channels (`int`, *optional*, defaults to 16):
        Channels of the per-level 1x1 weight convolutions (`"spatial"` mode), as in ASFF.
    head_hidden_size (`int`, *optional*, defaults to 2048):
        Hidden width of the classification MLP.
    classifier_dropout (`float`, *optional*, defaults to 0.0):
        Dropout before the last linear layer.
    zero_init_residual (`bool`, *optional*, defaults to `True`):
        Start each residual block's last BatchNorm at zero, so a randomly initialised network begins as a shallow one
        with small logits (Goyal et al. 2017). Helps training from scratch; irrelevant when weights are loaded.
        ResNet backbones only (a timm backbone keeps timm's own initialisation).
    image_size (`int`, *optional*, defaults to 224):
        Input resolution the model is trained and served at (also written into the image processor).
    decision_threshold (`float`, *optional*, defaults to 0.5):
        Binary models predict class 1 when its calibrated probability is at least this (chosen on validation by
        `train_hf.py`); the one home of the decision rule (`modeling.decision`).
    temperature (`float`, *optional*, defaults to 1.0):
        Calibration: probabilities are softmax(logits / temperature), the temperature fitted on validation.
    ood_method (`str`, *optional*):
        Out-of-distribution score computed in the forward pass from the pooled features: `"mahalanobis"` (distance
        to the nearest class mean under the shared training covariance, Lee et al. 2018; its statistics are buffers
        saved with the weights). `None`: no score.
    ood_threshold (`float`, *optional*):
        Images whose OOD score exceeds this are flagged as outside the training distribution; set on validation so
        that `ood_pass_rate` of in-distribution images pass.
    ood_pass_rate (`float`, *optional*, defaults to 0.95):
        The share of validation images the OOD threshold lets through.
    ood_feature (`str`, *optional*, defaults to `"pooled"`):
        What the OOD score measures: `"pooled"`, the pooled fused features the head reads; `"stages"`, those plus the
        global averages of both fused stages (wider, and closer to the backbone's generic features: for a small
        ImageNet-initialised backbone it flags more non-dermoscopic images at the same pass rate; measured in
        RESULTS.md).
    lesion_focus_loss_coefficient (`float`, *optional*, defaults to 0.0):
        Training only: weight of a loss term, added to the cross-entropy when the forward pass is given
        `lesion_masks`, that is the share of the true class's Grad-CAM evidence at the fused map (the CAM the report
        measures, before its ReLU, in absolute value) outside the lesion mask grown by one cell. 0: off. It asks the
        model to base its evidence on the lesion rather than on the skin and the frame around it ("right for the
        right reasons", Ross et al. 2017).
    """

    model_type = "asff_resnet"
    sub_configs_defaults: ClassVar = {
        "backbone_config": SubConfigSpec(config_class=ResNetConfig, init_kwargs=RESNET50_BACKBONE),
    }

    backbone_config: dict | PreTrainedConfig | None = None
    fusion_mode: str = "channel"
    fusion_channels: int | None = None
    fusion_hidden_size: int = 1024
    spatial_compress_channels: int = 16
    head_hidden_size: int = 2048
    classifier_dropout: float = 0.0
    zero_init_residual: bool = True
    image_size: int = 224
    decision_threshold: float = 0.5
    temperature: float = 1.0
    ood_method: str | None = None
    ood_threshold: float | None = None
    ood_pass_rate: float = 0.95
    ood_feature: str = "pooled"
    lesion_focus_loss_coefficient: float = 0.0

    def __post_init__(self, **kwargs):
        timm_name = kwargs.pop("backbone", None)
        if timm_name is not None:
            if self.backbone_config is not None:
                raise ValueError("Give either backbone (a timm model name) or backbone_config, not both")
            self.backbone_config = {"model_type": "timm_backbone", "backbone": timm_name}
        if isinstance(self.backbone_config, dict):
            backbone = {"model_type": "resnet", **self.backbone_config}
            # Backbone configs default to the last stage only; the fusion needs two.
            if backbone.get("out_features") is None and backbone.get("out_indices") is None:
                if backbone["model_type"] == "timm_backbone":
                    backbone["out_indices"] = list(TIMM_OUT_INDICES)
                else:
                    backbone["out_features"] = RESNET50_BACKBONE["out_features"]
            self.backbone_config = backbone
        if self.id2label is None and kwargs.get("num_labels") in (None, 2):
            self.id2label = dict(DEFAULT_ID2LABEL)
            self.label2id = {v: k for k, v in DEFAULT_ID2LABEL.items()}
        super().__post_init__(**kwargs)
        if self.fusion_mode not in FUSION_MODES:
            raise ValueError(f"fusion_mode={self.fusion_mode!r} is not one of {', '.join(FUSION_MODES)}")
        self._check_stages()
        if self.fusion_channels is None and self.stage_channels is not None:
            self.fusion_channels = self.stage_channels[0]
        for name in ("fusion_channels", "fusion_hidden_size", "spatial_compress_channels", "head_hidden_size",
                     "image_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}")
        if not 0.0 <= self.decision_threshold <= 1.0:
            raise ValueError(f"decision_threshold must be in [0, 1], got {self.decision_threshold}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.ood_method is not None and self.ood_method not in OOD_METHODS:
            raise ValueError(f"ood_method={self.ood_method!r} is not one of {', '.join(OOD_METHODS)} (or None)")
        if self.ood_feature not in OOD_FEATURES:
            raise ValueError(f"ood_feature={self.ood_feature!r} is not one of {', '.join(OOD_FEATURES)}")
        if not self.lesion_focus_loss_coefficient >= 0:
            raise ValueError(f"lesion_focus_loss_coefficient must be >= 0, got {self.lesion_focus_loss_coefficient}")
        if not 0.0 < self.ood_pass_rate < 1.0:
            raise ValueError(f"ood_pass_rate must be in (0, 1), got {self.ood_pass_rate}")

    def _check_stages(self) -> None:
        """Two stages, low level first. A timm backbone's stage names are known only once timm builds it (the
        backbone checks its `out_indices` then); here only what the indices alone tell."""
        backbone = self.backbone_config
        stages = getattr(backbone, "out_features", None)
        if isinstance(backbone, TimmBackboneConfig) and stages is None:
            indices = list(backbone.out_indices or [])
            if len(indices) != 2:
                raise ValueError(f"backbone_config.out_indices must select two stages (low, high), e.g. "
                                 f"{TIMM_OUT_INDICES}, got {indices}")
            if (indices[0] < 0) == (indices[1] < 0) and not indices[0] < indices[1]:
                raise ValueError(f"backbone_config.out_indices must be ordered low level first, got {indices}")
            return
        stages = list(stages or [])
        if len(stages) != 2:
            raise ValueError(f"backbone_config.out_features must name two stages (low, high), got {stages}")
        low, high = (backbone.stage_names.index(s) for s in stages)
        if not low < high:
            raise ValueError(f"backbone_config.out_features must be ordered low level first, got {stages}")

    @property
    def stage_channels(self) -> tuple[int, int] | None:
        """Channels of the (low, high) stages fed to the fusion module, when the backbone config states them (ResNet
        and other transformers backbones with `hidden_sizes`); None for a timm backbone, whose channels are read
        from the built network (`AsffResNetModel.stage_channels`)."""
        backbone = self.backbone_config
        sizes, names, stages = (getattr(backbone, key, None) for key in ("hidden_sizes", "stage_names",
                                                                          "out_features"))
        if isinstance(backbone, TimmBackboneConfig) or not (sizes and names and stages):
            return None
        return tuple(sizes[names.index(s) - 1] for s in stages)


__all__ = ["AsffResNetConfig", "FUSION_MODES", "OOD_METHODS"]
