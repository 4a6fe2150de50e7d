"""Training that asks the model to read the lesion (`lesion_focus_loss_coefficient`): the loss term is Grad-CAM's
share outside the lesion, the proxy masks move with the augmentation, and train_hf.py wires it (or refuses it)."""

import json
import logging

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN_ARGS, skin_with_lesion, tiny_config
from PIL import Image
from torchvision import tv_tensors

from modeling import AsffResNetConfig, AsffResNetForImageClassification
from modeling.data import (
    DermoscopeFrame,
    HairLines,
    ShadesOfGray,
    build_transforms,
    collate_fn,
    image_with_lesion_mask,
    make_transform_fn,
)
from train_hf import run

SIZE = 64  # the tiny backbone's fused map is then 4 x 4 (stride 16)


def tiny_model(**kwargs) -> AsffResNetForImageClassification:
    torch.manual_seed(0)
    return AsffResNetForImageClassification(tiny_config(image_size=SIZE, **kwargs)).eval()


def manual_grad_cam(model, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Grad-CAM at the fused map by the book, before its ReLU: the true class's logit, its gradient at the map
    averaged per channel as the channel weights, the weighted sum."""
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["map"] = output

    handle = model.asff_resnet.fusion_output.register_forward_hook(keep)
    try:
        logits = model(pixel_values=pixels).logits
    finally:
        handle.remove()
    logits.gather(1, labels[:, None]).sum().backward()
    fused = captured["map"]
    weights = fused.grad.mean(dim=(2, 3))
    return torch.einsum("bc,bchw->bhw", weights, fused).detach()


def test_the_term_is_the_share_of_grad_cam_evidence_outside_the_lesion_grown_by_one_cell():
    model = tiny_model()
    pixels, labels = torch.randn(3, 3, SIZE, SIZE), torch.tensor([0, 1, 1])
    cam = manual_grad_cam(model, pixels, labels).abs()  # evidence for and against: a negative map is no way out
    assert cam.shape[-2:] == (4, 4)
    masks = torch.zeros(3, SIZE, SIZE)
    masks[:, :16, :16] = 1  # exactly the map's top-left cell; grown by one cell: the top-left 2 x 2 cells
    inside = torch.zeros(4, 4, dtype=torch.bool)
    inside[:2, :2] = True
    expected = torch.stack([c[~inside].sum() / c.sum() for c in cam if c.sum() > 0]).mean()
    term = model.lesion_focus_loss(model.asff_resnet(pixels), labels, masks)
    assert term.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    assert 0 < term.item() < 1


def test_forward_adds_the_term_only_with_masks_labels_and_a_coefficient():
    pixels, labels = torch.randn(2, 3, SIZE, SIZE), torch.tensor([0, 1])
    masks = torch.zeros(2, SIZE, SIZE)
    masks[:, :16, :20] = 1  # the map's top-left corner: grown by one cell it leaves 10 of the 16 cells outside
    plain = tiny_model()
    guided = tiny_model(lesion_focus_loss_coefficient=0.5)
    cross_entropy = plain(pixel_values=pixels, labels=labels).loss
    assert plain(pixel_values=pixels, labels=labels, lesion_masks=masks).loss.item() == cross_entropy.item()
    assert guided(pixel_values=pixels, labels=labels).loss.item() == cross_entropy.item()
    assert guided(pixel_values=pixels, labels=labels, lesion_masks=torch.zeros_like(masks)).loss.item() == \
        pytest.approx(cross_entropy.item())  # no lesion found: no term
    assert guided(pixel_values=pixels, lesion_masks=masks).loss is None
    term = guided.lesion_focus_loss(guided.asff_resnet(pixels), labels, masks)
    total = guided(pixel_values=pixels, labels=labels, lesion_masks=masks).loss
    assert total.item() == pytest.approx(cross_entropy.item() + 0.5 * term.item(), rel=1e-5)
    # The term alone trains the backbone too (through the map and through the channel weights).
    guided.train()
    guided.zero_grad()
    guided.lesion_focus_loss(guided.asff_resnet(pixels), labels, masks).backward()
    assert sum(p.grad.abs().sum() for p in guided.asff_resnet.backbone.parameters() if p.grad is not None) > 1e-3
    assert sum(p.grad.abs().sum() for p in guided.classifier.parameters() if p.grad is not None) > 1e-3


def test_the_coefficient_is_saved_and_checked(tmp_path):
    tiny_config(lesion_focus_loss_coefficient=0.25).save_pretrained(tmp_path)
    assert AsffResNetConfig.from_pretrained(tmp_path).lesion_focus_loss_coefficient == 0.25
    assert AsffResNetConfig().lesion_focus_loss_coefficient == 0.0
    with pytest.raises(ValueError, match="lesion_focus_loss_coefficient must be >= 0"):
        tiny_config(lesion_focus_loss_coefficient=-1.0)


def test_the_proxy_mask_moves_with_the_augmented_image():
    """An off-centre dark lesion: after random crops, flips and rotations the mask must still cover the dark pixels
    (a mask left where it was would cover skin after most flips)."""
    image, _ = skin_with_lesion(size=160, centre=(50, 50), radius=30)
    transform = build_transforms(96, [0.0] * 3, [1.0] * 3, train=True, color_constancy_power=6.0)
    checked = 0
    for seed in range(12):
        torch.manual_seed(seed)
        pixels, mask = transform(*image_with_lesion_mask(Image.fromarray(image)))
        assert isinstance(mask, tv_tensors.Mask) and mask.shape == (1, 96, 96)
        assert set(mask.unique().tolist()) <= {0, 1}
        inside = mask[0].bool()
        if inside.sum() < 20 or (~inside).sum() < 20:  # the crop kept (almost) only lesion or only skin
            continue
        grey = pixels.mean(0)
        assert grey[inside].mean() < grey[~inside].mean() - 0.2, seed
        checked += 1
    assert checked >= 6


def test_pixel_transforms_leave_the_mask_alone():
    image, _ = skin_with_lesion(size=64, centre=(32, 32), radius=16)
    pixels = tv_tensors.Image(torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous())
    mask = tv_tensors.Mask(torch.from_numpy(np.asarray(image[..., 0] < 128, dtype=np.uint8))[None])
    for transform in (ShadesOfGray(6.0), DermoscopeFrame(p=1.0), HairLines(p=1.0)):
        torch.manual_seed(0)
        out_pixels, out_mask = transform(pixels, mask)
        assert torch.equal(out_mask, mask), type(transform).__name__
        assert not torch.equal(out_pixels, pixels), type(transform).__name__


def test_masks_reach_the_batch_only_when_asked():
    image = Image.fromarray(skin_with_lesion(size=64, centre=(32, 32), radius=16)[0])
    blank = Image.new("RGB", (64, 64), (200, 160, 150))  # no lesion: an all-zero mask
    transform = build_transforms(32, [0.5] * 3, [0.5] * 3, train=True)
    batch = {"image": [image, blank], "label": [1, 0]}
    plain = make_transform_fn(transform)(dict(batch))
    assert "lesion_mask" not in plain
    with_masks = make_transform_fn(transform, lesion_masks=True)(dict(batch))
    examples = [{"pixel_values": p, "label": lb, "lesion_mask": m}
                for p, lb, m in zip(with_masks["pixel_values"], with_masks["label"], with_masks["lesion_mask"],
                                    strict=True)]
    collated = collate_fn(examples)
    assert collated["lesion_masks"].shape == (2, 32, 32)
    assert collated["lesion_masks"][0].sum() > 0 and collated["lesion_masks"][1].sum() == 0


def test_train_hf_trains_with_the_term_and_records_it(image_folder, tmp_path, caplog):
    out = tmp_path / "run"
    result = run(["--dataset", str(image_folder), "--output_dir", str(out), "--num_train_epochs", "1",
                  "--lesion_focus_loss_coefficient", "0.5", "--color_constancy", "true", "--cam_frame_share", "false",
                  *TINY_TRAIN_ARGS])
    assert result["channel"]["test"]["n"] == 12
    assert json.loads((out / "config.json").read_text())["lesion_focus_loss_coefficient"] == 0.5
    assert json.loads((out / "metrics.json").read_text())["settings"]["lesion_focus_loss_coefficient"] == 0.5
    # A fine-tune of it keeps both dermoscopy-specific settings, and says so where a user sees it (a warning)
    fine_tune = ["--model_name_or_path", str(out), "--dataset", str(image_folder), "--max_steps", "1",
                 "--cam_frame_share", "false", *TINY_TRAIN_ARGS]
    with caplog.at_level(logging.WARNING, logger="modeling.training"):
        run([*fine_tune, "--output_dir", str(tmp_path / "ft")])
    kept = [r.getMessage() for r in caplog.records if r.getMessage().startswith("kept from")]
    assert len(kept) == 1 and "lesion-focus loss (coefficient 0.5" in kept[0] and "colour constancy" in kept[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modeling.training"):
        run([*fine_tune, "--output_dir", str(tmp_path / "ft-off"), "--lesion_focus_loss_coefficient", "0",
             "--color_constancy", "false"])
    assert not [r for r in caplog.records if r.getMessage().startswith("kept from")]


@pytest.mark.parametrize("extra, message", [
    (["--baseline", "mobilenet_v2"], "needs an ASFF model"),
    (["--class_weighting", "balanced"], "the weighted loss would replace the model's"),
])
def test_train_hf_refuses_what_would_drop_the_term(extra, message, image_folder, tmp_path, caplog):
    with pytest.raises(SystemExit) as exit_info:
        run(["--dataset", str(image_folder), "--output_dir", str(tmp_path / "out"), "--num_train_epochs", "1",
             "--lesion_focus_loss_coefficient", "0.5", *extra, *TINY_TRAIN_ARGS])
    assert exit_info.value.code == 2 and message in caplog.text
