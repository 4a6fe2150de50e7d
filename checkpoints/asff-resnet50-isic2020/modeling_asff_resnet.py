"""ASFF-ResNet (arXiv 2510.03876): a ResNet whose stage3 and stage4 features are fused with learned weights
before an MLP head; any transformers or timm backbone can take the ResNet's place (its last two stages are fused).
Written in the style of transformers' `modeling_resnet.py`; self-contained so that `save_pretrained` can ship it
as remote code."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ResNetBackbone
from transformers import initialization as init
from transformers.backbone_utils import BackboneType
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_asff_resnet import AsffResNetConfig


@dataclass
class AsffResNetModelOutput(ModelOutput):
    """
    last_hidden_state: the fused feature map, (batch, channels, height, width) at the low-level stage's size.
    pooler_output: its global average, (batch, channels).
    fusion_weights: channel mode (batch, channels) weight of the low-level stage (the high level gets 1 - w);
        spatial mode (batch, 2, height, width) per-pixel weights of (low, high); none mode None.
    hidden_states: the backbone's per-stage outputs when `output_hidden_states=True`.
    stage_pooled: the global averages of the two fused stages, concatenated (batch, low + high channels); only with
        `config.ood_feature="stages"`, for the OOD score.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    fusion_weights: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    stage_pooled: torch.FloatTensor | None = None


@dataclass
class AsffResNetImageClassifierOutput(ModelOutput):
    """Classifier output: `loss` (when labels are given), `logits` (raw: calibrate with `config.temperature`), the
    model output's `fusion_weights` and `hidden_states`, the pooled features the head reads (`pooler_output`), and
    `ood_score` (batch,), the out-of-distribution score of `config.ood_method` (None without one; higher = further
    from the training data; above `config.ood_threshold` = flagged). `ood_features`: what that score measures when
    it is not `pooler_output` (`config.ood_feature="stages"`), else None."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    fusion_weights: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    pooler_output: torch.FloatTensor | None = None
    ood_score: torch.FloatTensor | None = None
    ood_features: torch.FloatTensor | None = None


def _project(in_channels: int, out_channels: int) -> nn.Module:
    return nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)


class AsffHighLevelAlign(nn.Module):
    """Projects the high-level stage to the fusion width with a 1x1 conv, then upsamples it to the low-level
    size. The paper upsamples first; both steps are linear and bilinear weights sum to one, so this order gives
    the same result (bias included) at a quarter of the cost."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, high: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.interpolate(self.proj(high), size=size, mode="bilinear", align_corners=False)


class AsffChannelFusion(nn.Module):
    """The paper's published fusion: a softmax over channels, computed from the pooled concatenation of both
    levels, weighs the low level (w) against the upsampled high level (1 - w). `stage_channels`: the (low, high)
    stages' channels, read from the backbone (default: the config's)."""

    def __init__(self, config: AsffResNetConfig, stage_channels: tuple[int, int] | None = None):
        super().__init__()
        low_channels, high_channels = stage_channels or config.stage_channels
        channels = config.fusion_channels
        self.low_proj = _project(low_channels, channels)
        self.high_align = AsffHighLevelAlign(high_channels, channels)
        self.weight_mlp = nn.Sequential(
            nn.Linear(2 * channels, config.fusion_hidden_size),
            nn.ReLU(),
            nn.Linear(config.fusion_hidden_size, channels),
        )

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.low_proj(low)
        high = self.high_align(high, low.shape[-2:])
        pooled = torch.cat([low, high], dim=1).mean(dim=(2, 3))
        weights = self.weight_mlp(pooled).softmax(dim=1)
        w = weights[:, :, None, None]
        return low * w + high * (1 - w), weights


class AsffSpatialFusion(nn.Module):
    """The original ASFF (Liu et al. 2019): per-level 1x1 convs, then a softmax across the two levels at every
    pixel gives (alpha, beta) maps; fused = alpha * low + beta * high."""

    def __init__(self, config: AsffResNetConfig, stage_channels: tuple[int, int] | None = None):
        super().__init__()
        low_channels, high_channels = stage_channels or config.stage_channels
        channels, compress = config.fusion_channels, config.spatial_compress_channels
        self.low_proj = _project(low_channels, channels)
        self.high_align = AsffHighLevelAlign(high_channels, channels)
        self.level_weights = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, compress, 1, bias=False), nn.BatchNorm2d(compress), nn.ReLU())
            for _ in range(2)
        )
        self.weight_logits = nn.Conv2d(2 * compress, 2, kernel_size=1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.low_proj(low)
        high = self.high_align(high, low.shape[-2:])
        compressed = [layer(x) for layer, x in zip(self.level_weights, (low, high), strict=True)]
        weights = self.weight_logits(torch.cat(compressed, dim=1)).softmax(dim=1)
        return low * weights[:, :1] + high * weights[:, 1:], weights


class AsffMahalanobisScorer(nn.Module):
    """Out-of-distribution score from the pooled features (Lee et al. 2018): the Mahalanobis distance to the nearest
    class mean under the covariance shared by the classes, divided by sqrt(feature size) (a scale that does not grow
    with the width). The class means and the precision matrix are buffers fitted on the training images
    (`modeling.calibration.fit_calibration`) and saved with the weights."""

    def __init__(self, num_features: int, num_labels: int):
        super().__init__()
        self.register_buffer("class_means", torch.zeros(num_labels, num_features))
        self.register_buffer("precision", torch.eye(num_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        diff = features.float()[:, None, :] - self.class_means.float()[None]  # (batch, classes, features)
        squared = torch.einsum("bcd,de,bce->bc", diff, self.precision.float(), diff)
        return (squared.min(dim=1).values.clamp_min(0) / features.shape[-1]).sqrt()


class AsffResNetPreTrainedModel(PreTrainedModel):
    config: AsffResNetConfig
    config_class = AsffResNetConfig
    base_model_prefix = "asff_resnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["ResNetConvLayer", "ResNetShortCut"]

    @torch.no_grad()
    def initialize_weights(self) -> None:
        super().initialize_weights()
        # The backbone is a sub-model that initialises itself (transformers' ResNet scheme, `_init_weights` below never
        # sees it), so its residual blocks' last BatchNorms are zeroed afterwards. init.zeros_ skips weights that
        # from_pretrained has loaded.
        model = self if isinstance(self, AsffResNetModel) else getattr(self, self.base_model_prefix, None)
        if (self.config.zero_init_residual and isinstance(model, AsffResNetModel)
                and isinstance(model.backbone, ResNetBackbone)):
            for stage in model.backbone.encoder.stages:
                for block in stage.layers:
                    init.zeros_(block.layer[-1].normalization.weight)

    def _init_weights(self, module: nn.Module) -> None:
        # The same scheme as transformers' ResNet: He-normal convs, PyTorch's default for linear layers.
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            if getattr(module, "num_batches_tracked", None) is not None:
                init.zeros_(module.num_batches_tracked)


def is_timm_backbone(backbone: nn.Module) -> bool:
    """A transformers `TimmBackbone` (told without importing it, which would import timm for every model)."""
    return getattr(backbone, "backbone_type", None) == BackboneType.TIMM


def build_backbone(backbone_config) -> nn.Module:
    """The backbone model of a backbone config: transformers' `ResNetBackbone` for a `ResNetConfig`, `TimmBackbone`
    for a `TimmBackboneConfig`, the matching `AutoBackbone` class for any other. Built directly (not through
    `AutoBackbone.from_config`) so that it shares the config object and the caller's dtype and device contexts."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

    return MODEL_FOR_BACKBONE_MAPPING[type(backbone_config)](backbone_config)


class AsffResNetModel(AsffResNetPreTrainedModel):
    """Backbone + fusion: pixel values -> fused feature map, its pooled vector and the fusion weights."""

    _FUSIONS = {"channel": AsffChannelFusion, "spatial": AsffSpatialFusion}

    def __init__(self, config: AsffResNetConfig):
        super().__init__(config)
        self.backbone = build_backbone(config.backbone_config)
        low, high = self.stage_reductions or (None, None)
        if low is not None and low > high:
            raise ValueError(f"The fused stages {self.backbone.out_features} must be ordered low level (finer) "
                             f"first; their strides are {low} and {high}")
        if config.fusion_channels is None:  # a timm backbone: its channels are known now
            config.fusion_channels = self.stage_channels[0]
        fusion = self._FUSIONS.get(config.fusion_mode)
        self.fusion = fusion(config, self.stage_channels) if fusion is not None else None
        # A named point after the fusion, so Grad-CAM can hook the fused map whatever the mode.
        self.fusion_output = nn.Identity()
        self.pooler = nn.AdaptiveAvgPool2d(1)
        self.post_init()

    @property
    def num_features(self) -> int:
        """Width of the pooled features the head reads."""
        return self.config.fusion_channels if self.fusion is not None else self.stage_channels[1]

    @property
    def stage_channels(self) -> tuple[int, int]:
        """Channels of the (low, high) stages fed to the fusion module, read from the backbone."""
        return tuple(self.backbone.channels)

    @property
    def stage_reductions(self) -> tuple[int, int] | None:
        """Strides of the (low, high) stages relative to the input (ResNet-50: 16, 32), read from the backbone;
        None for a transformers backbone other than ResNet (the fusion resizes to the low stage's grid anyway)."""
        if is_timm_backbone(self.backbone):
            return tuple(self.backbone._backbone.feature_info.reduction())
        if isinstance(self.backbone, ResNetBackbone):
            config = self.backbone.config  # stem: stride 4; each stage after the first halves the grid
            first = 2 if config.downsample_in_first_stage else 1
            strides = [4] + [4 * first * 2 ** i for i in range(len(config.depths))]
            return tuple(strides[config.stage_names.index(name)] for name in self.backbone.out_features)
        return None

    def stage_modules(self) -> tuple[nn.Module, nn.Module]:
        """The modules whose outputs are the (low, high) stages the fusion reads (Grad-CAM's stage targets): a
        transformers backbone's `encoder.stages[...]` (ResNet and the like), a timm backbone's feature modules."""
        names = self.backbone.out_features
        if is_timm_backbone(self.backbone):
            network = self.backbone._backbone
            # timm's feature wrappers (FeatureListNet) flatten `a.b` into `a_b`; EfficientNetFeatures keeps it
            return tuple(_submodule(network, name) for name in names)
        stages = getattr(getattr(self.backbone, "encoder", None), "stages", None)
        if stages is None:
            raise NotImplementedError(f"{type(self.backbone).__name__} has no encoder.stages to name the fused stages")
        return tuple(stages[self.backbone.stage_names.index(name) - 1] for name in names)

    def _check_input(self, pixel_values: torch.Tensor | None) -> None:
        channels = self.config.backbone_config.num_channels
        shape = None if pixel_values is None else tuple(pixel_values.shape)
        if shape is None or len(shape) != 4 or shape[1] != channels:
            raise ValueError(f"pixel_values must have shape (batch, {channels}, height, width), got {shape}")

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> AsffResNetModelOutput | tuple:
        self._check_input(pixel_values)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        features = self.backbone(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        low, high = features.feature_maps
        output = self.fuse(low, high, hidden_states=features.hidden_states)
        return output if return_dict else output.to_tuple()

    def fuse(self, low: torch.Tensor, high: torch.Tensor, hidden_states: tuple | None = None) -> AsffResNetModelOutput:
        """Everything above the backbone, from its two stage maps: fusion, pooling and the OOD stage features. Its own
        method so that stage maps computed elsewhere (an onnxruntime graph of the backbone, `modeling.onnx_runtime`)
        give the torch outputs, and Grad-CAM's backward, without running the backbone again."""
        if self.fusion is None:
            fused, weights = high, None
        else:
            fused, weights = self.fusion(low, high)
        fused = self.fusion_output(fused)
        pooled = self.pooler(fused).flatten(1)
        stage_pooled = None
        if getattr(self.config, "ood_feature", "pooled") == "stages":
            stage_pooled = torch.cat([low.mean(dim=(2, 3)), high.mean(dim=(2, 3))], dim=1)
        return AsffResNetModelOutput(
            last_hidden_state=fused, pooler_output=pooled, fusion_weights=weights, hidden_states=hidden_states,
            stage_pooled=stage_pooled,
        )


def _submodule(network: nn.Module, name: str) -> nn.Module:
    try:
        return network.get_submodule(name)
    except AttributeError:
        return network.get_submodule(name.replace(".", "_"))


class AsffResNetForImageClassification(AsffResNetPreTrainedModel):
    """ASFF-ResNet with the paper's MLP head: Linear -> ReLU -> Dropout -> Linear over the pooled fused map."""

    def __init__(self, config: AsffResNetConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.asff_resnet = AsffResNetModel(config)
        self.classifier = nn.Sequential(
            nn.Linear(self.asff_resnet.num_features, config.head_hidden_size),
            nn.ReLU(),
            nn.Dropout(config.classifier_dropout),
            nn.Linear(config.head_hidden_size, config.num_labels),
        )
        self.ood_scorer = (
            AsffMahalanobisScorer(self.ood_feature_size, config.num_labels)
            if config.ood_method == "mahalanobis" else None
        )
        self.post_init()

    @property
    def ood_feature_size(self) -> int:
        """Width of what the OOD score measures (`config.ood_feature`): the pooled features, plus both stages'."""
        extra = sum(self.asff_resnet.stage_channels) if getattr(self.config, "ood_feature", "pooled") == "stages" else 0
        return self.asff_resnet.num_features + extra

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        lesion_masks: torch.Tensor | None = None,
        **kwargs,
    ) -> AsffResNetImageClassifierOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices for the cross-entropy loss (`problem_type` is inferred as in transformers' ResNet).
        lesion_masks (`torch.Tensor` of shape `(batch_size, height, width)`, *optional*):
            Training only: 1 on each input image's lesion, 0 elsewhere (all 0: no mask for that image). With `labels`
            and `config.lesion_focus_loss_coefficient > 0`, the loss adds that coefficient times
            `lesion_focus_loss`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.asff_resnet(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        output = self._classify(outputs, labels)
        coefficient = getattr(self.config, "lesion_focus_loss_coefficient", 0.0)
        if lesion_masks is not None and labels is not None and coefficient > 0:
            output.loss = output.loss + coefficient * self.lesion_focus_loss(outputs, labels, lesion_masks)
        return output if return_dict else output.to_tuple()

    def lesion_focus_loss(self, outputs: AsffResNetModelOutput, labels: torch.LongTensor,
                          lesion_masks: torch.Tensor) -> torch.Tensor:
        """Mean share of the true class's Grad-CAM evidence at the fused map that lies outside the lesion (its mask
        averaged onto the map's grid and grown by one cell: the border is part of the lesion's evidence), over the
        images with a mask. The evidence is the map before Grad-CAM's ReLU, in absolute value: with the ReLU'd map an
        image whose map is negative everywhere scores 0, and training found that way out (7 % of validation images
        ended with an empty Grad-CAM); evidence against the class outside the lesion is context too. Differentiable,
        so that training can lower it."""
        fused, pooled = outputs.last_hidden_state, outputs.pooler_output
        with torch.enable_grad():
            if not pooled.requires_grad:  # evaluated without a graph: the value only
                pooled = pooled.detach().requires_grad_()
            hidden = pooled
            for layer in self.classifier:  # Grad-CAM explains the model as served: no dropout
                hidden = hidden if isinstance(layer, nn.Dropout) else layer(hidden)
            # The pooling is a mean, so the gradient at the pooled features is Grad-CAM's channel weights (x H*W).
            (weights,) = torch.autograd.grad(hidden.gather(1, labels[:, None]).sum(), pooled, create_graph=True)
        cam = torch.einsum("bc,bchw->bhw", weights, fused).abs()
        masks = F.adaptive_avg_pool2d(lesion_masks[:, None].to(fused.dtype), fused.shape[-2:])
        masks = F.max_pool2d(masks, kernel_size=3, stride=1, padding=1)[:, 0]
        total = cam.flatten(1).sum(1)
        outside = (cam * (1 - masks)).flatten(1).sum(1)
        valid = (masks.flatten(1).amax(1) > 0) & (total > 0)
        if not valid.any():
            return cam.sum() * 0  # keeps the graph
        return (outside[valid] / total[valid]).mean()

    def forward_from_stages(self, low: torch.Tensor, high: torch.Tensor) -> AsffResNetImageClassifierOutput:
        """The classifier's outputs from the backbone's two stage maps (`AsffResNetModel.fuse`): what `forward` gives
        for the image those maps came from."""
        return self._classify(self.asff_resnet.fuse(low, high))

    def _classify(self, outputs: AsffResNetModelOutput, labels: torch.LongTensor | None = None
                  ) -> AsffResNetImageClassifierOutput:
        logits = self.classifier(outputs.pooler_output)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        ood_features = None
        if outputs.stage_pooled is not None:
            ood_features = torch.cat([outputs.stage_pooled, outputs.pooler_output], dim=1)
        scored = ood_features if ood_features is not None else outputs.pooler_output
        ood_score = self.ood_scorer(scored) if self.ood_scorer is not None else None
        return AsffResNetImageClassifierOutput(
            loss=loss, logits=logits, fusion_weights=outputs.fusion_weights, hidden_states=outputs.hidden_states,
            pooler_output=outputs.pooler_output, ood_score=ood_score, ood_features=ood_features,
        )


__all__ = [
    "AsffMahalanobisScorer",
    "AsffResNetForImageClassification",
    "AsffResNetModel",
    "AsffResNetPreTrainedModel",
    "AsffResNetModelOutput",
    "AsffResNetImageClassifierOutput",
]
