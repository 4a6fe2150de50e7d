"""What turns an accelerator session into shipped models, on the CPU with tiny models: the sweep's batch augmentation
and Grad-CAM frame share, the pack/unpack of returned weights (recipes/gpu_sweep.py, recipes/unpack_device_models.py),
`train_hf.py --skip_training` (calibrate, evaluate and release a model trained elsewhere), and the wider OOD feature
(`config.ood_feature="stages"`)."""

import json
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT, TINY_IMAGE_SIZE, TINY_TRAIN_ARGS, tiny_config

from modeling import AsffResNetConfig, AsffResNetForImageClassification
from modeling.calibration import collect_features, fit_calibration
from modeling.explain import cam_frame_share, raw_grad_cams
from modeling.image_processing import build_image_processor

sys.path.insert(0, str(ROOT / "recipes"))
import gpu_sweep  # noqa: E402
import unpack_device_models  # noqa: E402


def test_augment_keeps_shape_and_range_and_varies_per_image():
    torch.manual_seed(0)
    images = torch.rand(6, 3, 32, 32)
    hairs = gpu_sweep.hair_bank(4, 32, torch.Generator().manual_seed(0))
    for dermoscopy in (False, True):
        out = gpu_sweep.augment(images, dermoscopy, hairs)
        assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
        assert not torch.allclose(out, images)
    same = gpu_sweep.augment(images[:1].repeat(4, 1, 1, 1), True, hairs)
    assert not torch.allclose(same[0], same[1])  # parameters are drawn per image, not per batch


def test_sweep_frame_share_matches_the_projects_definition():
    """The sweep's batched Grad-CAM frame share equals modeling.explain's (raw CAM of the true class, outer 1/8)."""
    torch.manual_seed(0)
    model = AsffResNetForImageClassification(tiny_config("channel")).eval()
    images = (torch.rand(4, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE) * 255).to(torch.uint8)
    labels = torch.tensor([0, 1, 1, 0])
    mean, std = gpu_sweep.IMAGENET_MEAN, gpu_sweep.IMAGENET_STD
    ours = gpu_sweep.frame_shares(model, images, labels, mean, std)
    pixels = gpu_sweep.normalise(images.float() / 255, mean, std).contiguous()
    cams, _ = raw_grad_cams(model, pixels, labels.tolist())
    theirs = [cam_frame_share(cam) for cam in cams]
    np.testing.assert_allclose(ours, theirs, atol=0.02)


def test_returned_weights_unpack_into_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = AsffResNetForImageClassification(tiny_config("spatial"))
    models = tmp_path / "models"
    model.save_pretrained(models / "r50-both-spatial")
    written = gpu_sweep.pack_weights(models, tmp_path / "out", chunk=4096)
    assert len(written) > 1  # split into parts
    run = {"run": {"backbone": "resnet50", "fusion": "spatial", "color_constancy": True, "resize": "squash",
                   "batch": 64, "epochs": 3, "lr": 1e-3, "seed": 1}, "best_epoch": 2, "history": [{}] * 3,
           "train_images": 10, "train_s": 1.0, "device": "test"}
    target = unpack_device_models.unpack(tmp_path / "out", "r50-both-spatial", tmp_path / "unpacked", run)
    again = AsffResNetForImageClassification.from_pretrained(target).eval()
    x = torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    expected = model.eval()(pixel_values=x).logits
    torch.testing.assert_close(again(pixel_values=x).logits, expected, atol=2e-2, rtol=2e-2)  # float16 transport
    processor = json.loads((target / "preprocessor_config.json").read_text())
    assert processor["do_color_constancy"] and processor["resize_mode"] == "squash"
    assert json.loads((target / "training_settings.json").read_text())["best_epoch"] == 2


def test_stages_ood_feature_is_wider_and_round_trips(tmp_path):
    config = tiny_config("channel", ood_feature="stages", ood_method="mahalanobis")
    model = AsffResNetForImageClassification(config).eval()
    x = torch.rand(3, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    out = model(pixel_values=x)
    low, high = model.asff_resnet.stage_channels
    assert out.ood_features.shape == (3, low + high + model.asff_resnet.num_features) == (3, model.ood_feature_size)
    assert out.ood_score.shape == (3,)
    model.save_pretrained(tmp_path)
    again = AsffResNetForImageClassification.from_pretrained(tmp_path).eval()
    assert again.config.ood_feature == "stages"
    torch.testing.assert_close(again(pixel_values=x).ood_score, out.ood_score)


def test_default_ood_feature_leaves_the_outputs_as_they_were():
    model = AsffResNetForImageClassification(tiny_config("channel")).eval()
    out = model(pixel_values=torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE))
    assert out.ood_features is None and model.asff_resnet(pixel_values=torch.rand(1, 3, 32, 32)).stage_pooled is None
    assert len(out.to_tuple()) == 3  # logits, fusion weights, pooled features: the tuple layout is unchanged


def test_an_unknown_ood_feature_is_refused():
    with pytest.raises(ValueError, match="ood_feature"):
        AsffResNetConfig(ood_feature="logits")


def test_calibration_fits_the_stages_feature():
    torch.manual_seed(0)
    model = AsffResNetForImageClassification(tiny_config("none", ood_feature="stages")).eval()
    batches = [{"pixel_values": torch.rand(8, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE),
                "labels": torch.tensor([0, 1] * 4)} for _ in range(2)]
    calibration = fit_calibration(model, batches, batches)
    assert model.ood_scorer.precision.shape[0] == model.ood_feature_size
    scores = collect_features(model, batches).ood_scores
    assert np.quantile(scores, 0.95) == pytest.approx(calibration.ood_threshold, rel=1e-5)


def test_skip_training_releases_a_model_trained_elsewhere(image_folder, tmp_path):
    """train_hf.py --skip_training: the weights are untouched; calibration, threshold, reports and card are as after
    training, and the external recipe is recorded."""
    import train_hf

    torch.manual_seed(0)
    source = tmp_path / "trained"
    model = AsffResNetForImageClassification(tiny_config("channel"))
    model.save_pretrained(source)
    build_image_processor(TINY_IMAGE_SIZE).save_pretrained(source)
    (source / "training_settings.json").write_text(json.dumps({
        "backbone": "lite0", "fusion": "channel", "epochs": 12, "lr": 5e-4, "batch": 64, "seed": 1,
        "best_epoch": 12, "trained_by": "recipes/gpu_sweep.py", "hardware": "a GPU"}))
    out = tmp_path / "release"
    result = train_hf.run(["--dataset", str(image_folder), "--model_name_or_path", str(source), "--skip_training",
                           "true", "--ood_feature", "stages", "--output_dir", str(out), "--cam_frame_share_limit",
                           "4", *TINY_TRAIN_ARGS])
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert settings["trained_by"] == "recipes/gpu_sweep.py" and settings["epochs"] == 12
    assert settings["init"] == "efficientnet-lite0 (ImageNet)" and settings["learning_rate"] == 5e-4
    assert result["channel"]["test"]["n"] == 12
    assert not (out / "trainer_state.json").exists() and (out / "training_settings.json").is_file()
    released = AsffResNetForImageClassification.from_pretrained(out)
    assert released.config.ood_feature == "stages" and released.config.ood_threshold is not None
    for name, tensor in model.state_dict().items():  # the trained weights are released as they were
        torch.testing.assert_close(released.state_dict()[name], tensor)
    assert "trained from scratch" not in (out / "README.md").read_text().split("## Training")[0].lower()


def test_skip_training_needs_a_model(image_folder, tmp_path):
    import train_hf

    with pytest.raises(SystemExit) as exit_info:
        train_hf.run(["--dataset", str(image_folder), "--skip_training", "true", "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2
