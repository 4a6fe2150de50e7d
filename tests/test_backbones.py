"""Pretrained backbone loading: torchvision state dicts through the key map, transformers ResNet checkpoints as is,
and loud failures for anything that does not cover the backbone exactly."""

import pytest
import torch
import torchvision
from helpers import tiny_config
from safetensors.torch import save_file
from torchvision.models.resnet import BasicBlock, ResNet
from transformers import ResNetBackbone, ResNetConfig, ResNetForImageClassification, ResNetModel

from modeling import AsffResNetConfig, AsffResNetForImageClassification
from modeling.backbones import load_pretrained_backbone, torchvision_to_transformers_key


def randomise_batch_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Fresh BatchNorms are all alike (1, 0, 0, 1): a key map that swapped two of them would go unnoticed."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor, low, high in ((module.weight, 0.5, 1.5), (module.bias, -0.1, 0.1),
                                          (module.running_mean, -0.1, 0.1), (module.running_var, 0.5, 1.5)):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model.eval()


def torchvision_features(model: ResNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    layer3 = model.layer3(model.layer2(model.layer1(x)))
    return layer3, model.layer4(layer3)


def backbone_of(model: AsffResNetForImageClassification) -> ResNetBackbone:
    return model.asff_resnet.backbone


@pytest.fixture(scope="module")
def torchvision_resnet50() -> ResNet:
    torch.manual_seed(0)
    return randomise_batch_norms(torchvision.models.resnet50(weights=None))


@pytest.fixture(scope="module")
def resnet50_state_dict_files(torchvision_resnet50, tmp_path_factory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("torchvision")
    state_dict = torchvision_resnet50.state_dict()
    torch.save(state_dict, folder / "resnet50.pth")
    save_file({k: v.contiguous() for k, v in state_dict.items()}, folder / "resnet50.safetensors")
    return {"state_dict": state_dict, ".pth": folder / "resnet50.pth", ".safetensors": folder / "resnet50.safetensors"}


@pytest.fixture(scope="module")
def resnet50_model() -> AsffResNetForImageClassification:
    return AsffResNetForImageClassification(AsffResNetConfig()).eval()


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("conv1.weight", "embedder.embedder.convolution.weight"),
        ("bn1.running_var", "embedder.embedder.normalization.running_var"),
        ("layer1.0.conv1.weight", "encoder.stages.0.layers.0.layer.0.convolution.weight"),
        ("layer3.5.bn3.num_batches_tracked", "encoder.stages.2.layers.5.layer.2.normalization.num_batches_tracked"),
        ("layer4.0.downsample.0.weight", "encoder.stages.3.layers.0.shortcut.convolution.weight"),
        ("layer2.0.downsample.1.bias", "encoder.stages.1.layers.0.shortcut.normalization.bias"),
        ("fc.weight", None),
        ("head.weight", None),
        ("layer1.0.conv0.weight", None),
    ],
)
def test_torchvision_key_map(key, expected):
    assert torchvision_to_transformers_key(key) == expected


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_resnet50_features_match(suffix, torchvision_resnet50, resnet50_state_dict_files, resnet50_model):
    load_pretrained_backbone(resnet50_model, resnet50_state_dict_files[suffix])
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torchvision_features(torchvision_resnet50, x)
        stage3, stage4 = backbone_of(resnet50_model)(x).feature_maps
        resnet50_model(x)  # the whole model runs on the loaded backbone
    torch.testing.assert_close(stage3, expected[0], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(stage4, expected[1], atol=1e-4, rtol=1e-5)


def test_torchvision_basic_blocks(tmp_path):
    """The same map serves basic-block ResNets (resnet18/34 style), here one block per stage."""
    torchvision_model = randomise_batch_norms(ResNet(BasicBlock, [1, 1, 1, 1]))
    torch.save(torchvision_model.state_dict(), tmp_path / "basic.pt")
    backbone = {"layer_type": "basic", "depths": [1, 1, 1, 1], "hidden_sizes": [64, 128, 256, 512]}
    model = AsffResNetForImageClassification(AsffResNetConfig(backbone_config=backbone, fusion_hidden_size=16,
                                                              head_hidden_size=16)).eval()
    load_pretrained_backbone(model, tmp_path / "basic.pt")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = torchvision_features(torchvision_model, x)
        actual = backbone_of(model)(x).feature_maps
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-5)


def corrupt(state_dict: dict, how: str) -> dict:
    state_dict = dict(state_dict)
    if how == "missing":
        del state_dict["layer2.1.conv2.weight"], state_dict["layer4.0.downsample.1.bias"]
    elif how == "unexpected":
        state_dict["layer1.0.conv4.weight"] = state_dict["layer1.0.conv3.weight"]
    elif how == "extra block":
        state_dict["layer4.3.conv1.weight"] = state_dict["layer4.2.conv1.weight"]
    elif how == "not torchvision":
        state_dict["module.extra"] = torch.zeros(1)
    elif how == "shape mismatch":
        state_dict["layer3.1.conv2.weight"] = torch.zeros(256, 256, 1, 1)
    return state_dict


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("missing", r"missing 2 key\(s\): encoder.stages.1.layers.1.layer.1.convolution.weight"),
        ("unexpected", r"unexpected 1 key\(s\): encoder.stages.0.layers.0.layer.3.convolution.weight"),
        ("extra block", r"depths: checkpoint \[3, 4, 6, 4\] vs model \[3, 4, 6, 3\]"),
        ("not torchvision", r"not torchvision ResNet keys: 1 key\(s\): module.extra"),
        ("shape mismatch", r"shape mismatch 1 key\(s\): encoder.stages.2.layers.1.layer.1.convolution.weight"),
    ],
)
def test_wrong_torchvision_file_fails_loudly(how, message, resnet50_state_dict_files, resnet50_model, tmp_path):
    path = tmp_path / "broken.pth"
    torch.save(corrupt(resnet50_state_dict_files["state_dict"], how), path)
    before = {k: v.clone() for k, v in backbone_of(resnet50_model).state_dict().items()}
    with pytest.raises(ValueError, match=message):
        load_pretrained_backbone(resnet50_model, path)
    after = backbone_of(resnet50_model).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a failed load must leave the backbone untouched"


def test_torchvision_layout_mismatch(resnet50_state_dict_files):
    with pytest.raises(ValueError, match=r"another layout.*layer_type: checkpoint 'bottleneck' vs model 'basic'"):
        load_pretrained_backbone(AsffResNetForImageClassification(tiny_config()), resnet50_state_dict_files[".pth"])


def test_missing_file_and_non_tensor_file(tmp_path):
    model = AsffResNetForImageClassification(tiny_config())
    with pytest.raises(FileNotFoundError):
        load_pretrained_backbone(model, tmp_path / "absent.pth")
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, tmp_path / "nested.pth")
    with pytest.raises(ValueError, match="not a flat state dict"):
        load_pretrained_backbone(model, tmp_path / "nested.pth")


def tiny_resnet_config(**overrides) -> ResNetConfig:
    layout = tiny_config().backbone_config.to_dict()
    keep = ("layer_type", "depths", "hidden_sizes", "embedding_size", "num_channels")
    return ResNetConfig(**{**{k: layout[k] for k in keep}, **overrides}, num_labels=5)


@pytest.mark.parametrize("architecture", [ResNetForImageClassification, ResNetModel, ResNetBackbone])
def test_transformers_checkpoint(architecture, tmp_path):
    torch.manual_seed(0)
    source = randomise_batch_norms(architecture(tiny_resnet_config()))
    source.save_pretrained(tmp_path)
    model = AsffResNetForImageClassification(tiny_config())
    load_pretrained_backbone(model, str(tmp_path))
    expected = (source.resnet if architecture is ResNetForImageClassification else source).state_dict()
    loaded = backbone_of(model).state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in loaded)


def test_transformers_checkpoint_layout_mismatch(tmp_path):
    ResNetModel(tiny_resnet_config(hidden_sizes=[8, 16, 24, 40])).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"hidden_sizes: checkpoint \[8, 16, 24, 40\] vs model \[8, 16, 24, 32\]"):
        load_pretrained_backbone(AsffResNetForImageClassification(tiny_config()), tmp_path)


def test_not_a_resnet_checkpoint(tiny_model_dir):
    with pytest.raises(ValueError, match="not a transformers ResNet checkpoint"):
        load_pretrained_backbone(AsffResNetForImageClassification(tiny_config()), tiny_model_dir)
