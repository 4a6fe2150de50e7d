"""torchvision baselines as transformers models: build, forward, loss, init, save/load (also remote code), Trainer."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision
from transformers import AutoConfig, AutoModelForImageClassification, Trainer, TrainingArguments

from modeling import (
    BASELINE_ARCHITECTURES,
    TorchvisionClassifierConfig,
    TorchvisionForImageClassification,
    build_baseline,
)

ID2LABEL = {0: "benign", 1: "malignant"}
# Small inputs keep the forward cheap; Inception-v3 needs 75 px.
SIZES = {"inception_v3": 75}
HEAVY = ("vgg16", "inception_v3")  # 134 M and 22 M parameters: seconds just to initialise


def size_of(architecture: str) -> int:
    return SIZES.get(architecture, 32)


@pytest.mark.parametrize(
    "architecture",
    [pytest.param(a, marks=pytest.mark.slow) if a in HEAVY else a for a in BASELINE_ARCHITECTURES],
)
def test_builds_and_runs(architecture):
    model = build_baseline(architecture, 2, ID2LABEL, size_of(architecture)).eval()
    assert model.config.architecture == architecture and model.config.id2label == ID2LABEL
    pixel_values = torch.randn(1, 3, size_of(architecture), size_of(architecture))
    with torch.no_grad():
        output = model(pixel_values=pixel_values, labels=torch.tensor([1]))
    assert output.logits.shape == (1, 2)
    expected = torch.nn.functional.cross_entropy(output.logits, torch.tensor([1]))
    torch.testing.assert_close(output.loss, expected)
    with torch.no_grad():
        assert model(pixel_values).loss is None


@pytest.mark.parametrize("architecture", ["mobilenet_v2", "efficientnet_b0"])
def test_keeps_torchvision_initialisation(architecture):
    """post_init must not re-initialise: same seed, same weights as torchvision's own constructor."""
    torch.manual_seed(0)
    model = build_baseline(architecture, 2, ID2LABEL, 32)
    torch.manual_seed(0)
    reference = torchvision.models.get_model(architecture, weights=None, num_classes=2).state_dict()
    ours = model.torchvision_model.state_dict()
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(ours[key], value), key


def test_invalid_configurations():
    with pytest.raises(ValueError, match="densenet121, mobilenet_v2"):
        build_baseline("alexnet", 2, ID2LABEL, 64)
    with pytest.raises(ValueError, match="75"):
        TorchvisionClassifierConfig(architecture="inception_v3", image_size=64)
    with pytest.raises(ValueError, match="dropout"):
        TorchvisionClassifierConfig(architecture="resnet50", dropout=0.2)
    with pytest.raises(ValueError, match="num_labels=3 but id2label has 2 entries"):
        build_baseline("mobilenet_v2", 3, ID2LABEL, 32)


def test_config_defaults_and_dropout():
    config = TorchvisionClassifierConfig()
    assert config.architecture == "resnet50" and config.id2label == ID2LABEL and config.num_labels == 2
    model = TorchvisionForImageClassification(TorchvisionClassifierConfig(architecture="mobilenet_v2", image_size=32,
                                                                          dropout=0.3))
    assert model.torchvision_model.classifier[0].p == 0.3


@pytest.fixture(scope="module")
def saved_mobilenet(tmp_path_factory):
    torch.manual_seed(0)
    model = build_baseline("mobilenet_v2", 2, ID2LABEL, 32).eval()
    out = tmp_path_factory.mktemp("mobilenet")
    model.save_pretrained(out)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(pixel_values).logits
    torch.save({"pixel_values": pixel_values, "logits": logits}, out / "expected.pt")
    return out, model


def test_save_and_load_round_trip(saved_mobilenet):
    directory, model = saved_mobilenet
    assert (directory / "baselines.py").is_file()  # the code ships with the weights
    assert AutoConfig.from_pretrained(directory).auto_map["AutoModelForImageClassification"] == (
        "baselines.TorchvisionForImageClassification"
    )
    loaded = AutoModelForImageClassification.from_pretrained(directory).eval()
    assert isinstance(loaded, TorchvisionForImageClassification)
    assert loaded.config.architecture == "mobilenet_v2" and loaded.config.image_size == 32
    expected = torch.load(directory / "expected.pt")
    with torch.no_grad():
        assert torch.equal(loaded(expected["pixel_values"]).logits, expected["logits"])


def test_new_head_is_initialised_and_the_rest_loaded(saved_mobilenet):
    """Keys missing from the checkpoint go through `_init_weights`; loaded ones stay untouched."""
    directory, model = saved_mobilenet
    loaded = AutoModelForImageClassification.from_pretrained(
        directory, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2}, ignore_mismatched_sizes=True
    )
    head = loaded.torchvision_model.classifier[1]
    assert head.weight.shape == (3, 1280) and torch.isfinite(head.weight).all() and torch.isfinite(head.bias).all()
    assert 0.005 < head.weight.std() < 0.05  # PyTorch's default for a 1280-input linear layer: std ~ 0.016
    torch.testing.assert_close(loaded.torchvision_model.features[0][0].weight,
                               model.torchvision_model.features[0][0].weight, rtol=0, atol=0)


@pytest.mark.slow  # a fresh Python importing torch and transformers
def test_loads_as_remote_code_in_a_fresh_process(saved_mobilenet, tmp_path):
    """Without this package on the path, `trust_remote_code=True` runs the shipped `baselines.py`."""
    directory, _ = saved_mobilenet
    code = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained({str(directory)!r}, trust_remote_code=True).eval()
        assert "modeling" not in sys.modules, "the project package must not be importable here"
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        expected = torch.load({str(directory / "expected.pt")!r})
        with torch.no_grad():
            assert torch.equal(model(expected["pixel_values"]).logits, expected["logits"])
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


class RandomImages(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(index)
        return {"pixel_values": torch.randn(3, 32, 32, generator=generator), "labels": index % 2}


def test_trains_with_trainer(tmp_path):
    model = build_baseline("mobilenet_v2", 2, ID2LABEL, 32)
    before = model.torchvision_model.classifier[1].weight.detach().clone()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True)
    result = Trainer(model=model, args=args, train_dataset=RandomImages()).train()
    assert result.training_loss > 0
    assert not torch.equal(before, model.torchvision_model.classifier[1].weight)
