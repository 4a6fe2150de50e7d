"""ASFF-ResNet as a transformers model: shapes in every fusion mode, the parameter budget, fusion-weight
properties, saving and loading (in process and as remote code in a fresh process), gradients and input checks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_IMAGE_SIZE, lesion_image, tiny_config
from transformers import AutoImageProcessor, AutoModelForImageClassification

from modeling import FUSION_MODES, AsffResNetConfig, AsffResNetForImageClassification
from modeling.image_processing import build_image_processor
from modeling.modeling_asff_resnet import AsffHighLevelAlign

DEFAULT_CHANNEL_PARAMETERS = 30_857_282


def seeded_model(config: AsffResNetConfig, seed: int = 0) -> AsffResNetForImageClassification:
    torch.manual_seed(seed)
    return AsffResNetForImageClassification(config).eval()


def images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def expected_shapes(config: AsffResNetConfig, size: int, batch: int) -> dict:
    """Stage3 is 1/16 of the input, stage4 1/32 (rounded up); the fused map lives on the stage3 grid."""
    low, high = -(-size // 16), -(-size // 32)
    if config.fusion_mode == "none":
        return {"fused": (batch, config.stage_channels[1], high, high), "weights": None}
    weights = (batch, config.fusion_channels) if config.fusion_mode == "channel" else (batch, 2, low, low)
    return {"fused": (batch, config.fusion_channels, low, low), "weights": weights}


def check_shapes(model: AsffResNetForImageClassification, size: int, batch: int) -> None:
    fused = []
    hook = model.asff_resnet.fusion_output.register_forward_hook(lambda module, args, out: fused.append(out))
    with torch.no_grad():
        output = model(images(size, batch))
    hook.remove()
    expected = expected_shapes(model.config, size, batch)
    assert output.logits.shape == (batch, model.config.num_labels)
    assert tuple(fused[0].shape) == expected["fused"]  # Grad-CAM's target layer sees the fused map
    assert (None if output.fusion_weights is None else tuple(output.fusion_weights.shape)) == expected["weights"]


@pytest.mark.parametrize("size", [224, 128, 100])
def test_shapes_tiny(fusion_mode, size):
    check_shapes(seeded_model(tiny_config(fusion_mode)), size, batch=2)


@pytest.mark.parametrize("fusion_mode", ["channel", "spatial"])
def test_shapes_resnet50(fusion_mode):
    model = seeded_model(AsffResNetConfig(fusion_mode=fusion_mode))
    for size in (224, 128):
        check_shapes(model, size, batch=1)


def test_parameter_count_of_the_default_configuration():
    config = AsffResNetConfig()
    assert (config.fusion_mode, config.stage_channels, config.fusion_channels) == ("channel", (1024, 2048), 1024)
    model = AsffResNetForImageClassification(config)
    assert model.num_parameters() == DEFAULT_CHANNEL_PARAMETERS  # ≈ 30.9 M


def test_fusion_weights_are_distributions():
    channel = seeded_model(tiny_config("channel"))(images(48)).fusion_weights
    torch.testing.assert_close(channel.sum(dim=1), torch.ones(2))  # softmax over channels
    spatial = seeded_model(tiny_config("spatial"))(images(48)).fusion_weights
    assert (spatial > 0).all()
    torch.testing.assert_close(spatial.sum(dim=1), torch.ones(2, 3, 3))  # softmax over the two levels, per pixel


@pytest.mark.parametrize(("high_size", "low_size"), [(7, 14), (4, 8), (7, 13)])
def test_projecting_before_upsampling_equals_the_papers_order(high_size, low_size):
    align = seeded_model(tiny_config("channel")).asff_resnet.fusion.high_align
    assert isinstance(align, AsffHighLevelAlign)
    torch.nn.init.normal_(align.proj.bias)  # a non-zero bias must commute with upsampling as well
    high = torch.randn(2, align.proj.in_channels, high_size, high_size)
    with torch.no_grad():
        ours = align(high, (low_size, low_size))
        upsampled = F.interpolate(high, size=(low_size, low_size), mode="bilinear", align_corners=False)
        papers = F.conv2d(upsampled, align.proj.weight, align.proj.bias)
    torch.testing.assert_close(ours, papers, atol=1e-5, rtol=1e-5)


def test_gradients_reach_fusion_and_backbone(fusion_mode):
    model = seeded_model(tiny_config(fusion_mode)).train()
    model(images(TINY_IMAGE_SIZE), labels=torch.tensor([0, 1])).loss.backward()
    modules = {"backbone stem": model.asff_resnet.backbone.embedder, "classifier": model.classifier}
    if fusion_mode != "none":
        modules["fusion"] = model.asff_resnet.fusion
    for name, module in modules.items():
        for parameter_name, parameter in module.named_parameters():
            grad = parameter.grad
            assert grad is not None and grad.abs().sum() > 0, f"no gradient reaches {name}: {parameter_name}"


def test_eval_output_is_deterministic(fusion_mode):
    model, x = seeded_model(tiny_config(fusion_mode, classifier_dropout=0.5)), images(TINY_IMAGE_SIZE)
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)


def test_outputs_loss_hidden_states_and_tuples():
    model, x = seeded_model(tiny_config("spatial")), images(TINY_IMAGE_SIZE)
    with torch.no_grad():
        plain = model(x)
        output = model(x, labels=torch.tensor([0, 1]), output_hidden_states=True)
        as_tuple = model(x, return_dict=False)
    assert plain.hidden_states is None and plain.loss is None
    assert output.loss.ndim == 0 and output.loss > 0
    assert [h.shape[1:] for h in output.hidden_states] == [(8, 8, 8), (8, 8, 8), (16, 4, 4), (24, 2, 2), (32, 1, 1)]
    torch.testing.assert_close(as_tuple[0], plain.logits)


@pytest.mark.parametrize("bad_shape", [(3, 32, 32), (2, 1, 32, 32), (2, 4, 32, 32), (1, 2, 3, 32, 32)])
def test_bad_input_names_the_expected_shape(bad_shape):
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        seeded_model(tiny_config())(torch.zeros(bad_shape))
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\), got None"):
        seeded_model(tiny_config())(None)


def test_unknown_fusion_mode_lists_the_choices():
    with pytest.raises(ValueError, match=", ".join(FUSION_MODES)):
        tiny_config("attention")


def test_config_defaults_and_round_trip():
    config = AsffResNetConfig(backbone_config={"layer_type": "basic", "depths": [1, 1, 1, 1],
                                               "hidden_sizes": [8, 16, 24, 32], "embedding_size": 8})
    assert config.backbone_config.out_features == ["stage3", "stage4"]  # both fused stages by default
    assert config.id2label == {0: "benign", 1: "malignant"}
    restored = AsffResNetConfig.from_dict(config.to_dict())
    assert restored.backbone_config.hidden_sizes == [8, 16, 24, 32] and restored.fusion_channels == 24
    with pytest.raises(ValueError, match="two stages"):
        AsffResNetConfig(backbone_config={"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 24, 32],
                                          "out_features": ["stage4"]})


def test_committed_checkpoints_ship_the_current_remote_code():
    """`trust_remote_code` users of a committed checkpoint run the library's code, not an older copy of it."""
    root = Path(__file__).resolve().parents[1]
    shipped = sorted((root / "checkpoints").glob("*/*.py"))
    if not shipped:
        pytest.skip("no committed checkpoints")
    for path in shipped:
        twin = root / "modeling" / path.name
        assert twin.is_file(), f"{path} has no counterpart in modeling/"
        assert path.read_bytes() == twin.read_bytes(), f"{path} differs from {twin}"


def test_committed_cards_usage_snippets_load_from_the_repository_root():
    """What a user copies from a shipped card (or the app's About tab) names the model's directory."""
    import re

    root = Path(__file__).resolve().parents[1]
    cards = sorted((root / "checkpoints").glob("*/README.md"))
    if not cards:
        pytest.skip("no committed checkpoints")
    for card in cards:
        named = re.findall(r'(?:model=|from_pretrained\()"([^"]+)"', card.read_text())
        assert len(named) == 3, card
        assert {root / name for name in named} == {card.parent}, (card, named)


def test_save_and_load_round_trip(tmp_path, fusion_mode):
    model, x = seeded_model(tiny_config(fusion_mode)), images(TINY_IMAGE_SIZE)
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert "model.safetensors" in files and not {"pytorch_model.bin", "model.bin"} & files
    assert {"configuration_asff_resnet.py", "modeling_asff_resnet.py"} <= files  # shipped as remote code
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_asff_resnet.AsffResNetConfig",
        "AutoModelForImageClassification": "modeling_asff_resnet.AsffResNetForImageClassification",
    }
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert isinstance(loaded, AsffResNetForImageClassification) and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


REMOTE_CODE_SCRIPT = """
import importlib.util, sys, torch
from transformers import AutoModelForImageClassification
assert importlib.util.find_spec("modeling") is None, "the project package must not be importable here"
model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2])).logits, sys.argv[3])
"""


@pytest.mark.slow  # a fresh Python importing torch and transformers
def test_remote_code_loads_in_a_fresh_process(tiny_model_dir, tmp_path):
    x = images(TINY_IMAGE_SIZE)
    torch.save(x, tmp_path / "x.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, str(tiny_model_dir), "x.pt", "logits.pt"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = AutoModelForImageClassification.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected(x).logits)


def last_batch_norms(model: AsffResNetForImageClassification) -> list[torch.Tensor]:
    return [block.layer[-1].normalization.weight for stage in model.asff_resnet.backbone.encoder.stages
            for block in stage.layers]


@pytest.mark.parametrize("zero_init_residual", [True, False])
def test_zero_init_residual(zero_init_residual):
    weights = last_batch_norms(seeded_model(tiny_config(zero_init_residual=zero_init_residual)))
    assert all(torch.equal(w, torch.full_like(w, 0.0 if zero_init_residual else 1.0)) for w in weights)


def test_other_num_labels_needs_ignore_mismatched_sizes(tmp_path):
    saved = seeded_model(tiny_config("channel", num_labels=3))
    with torch.no_grad():
        for weight in last_batch_norms(saved):  # loading must not re-apply the zero init to loaded weights
            weight.uniform_(0.5, 1.5)
    saved.save_pretrained(tmp_path)
    labels = {"id2label": {0: "benign", 1: "malignant"}, "label2id": {"benign": 0, "malignant": 1}}
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # transformers raises; nothing silent
        AsffResNetForImageClassification.from_pretrained(tmp_path, **labels)
    model = AsffResNetForImageClassification.from_pretrained(tmp_path, ignore_mismatched_sizes=True, **labels)
    assert model.config.num_labels == 2 and model.classifier[-1].out_features == 2
    expected = saved.asff_resnet.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.asff_resnet.state_dict().items())
    with torch.no_grad():
        assert model(images(TINY_IMAGE_SIZE)).logits.shape == (2, 2)


@pytest.mark.parametrize("size", [TINY_IMAGE_SIZE, 224])
def test_image_processor_reloads_beside_the_model(tiny_model_dir, tmp_path, size):
    folder = tiny_model_dir
    if size != TINY_IMAGE_SIZE:
        build_image_processor(size).save_pretrained(tmp_path)
        folder = tmp_path
    processor = AutoImageProcessor.from_pretrained(folder)
    image = lesion_image(1, np.random.default_rng(0), size=48).resize((60, 48))  # not square
    assert tuple(processor(image, return_tensors="pt").pixel_values.shape) == (1, 3, size, size)
