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
        "best_epoch": 12, "trained_by": "recipes/gpu_sweep.py", "hardware": "a GPU", "ema": 0.995,
        "sources": ["isic2020-part", "isic2019-part"]}))
    out = tmp_path / "release"
    result = train_hf.run(["--dataset", str(image_folder), "--model_name_or_path", str(source), "--skip_training",
                           "true", "--ood_feature", "stages", "--output_dir", str(out), "--cam_frame_share_limit",
                           "4", *TINY_TRAIN_ARGS])
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert settings["trained_by"] == "recipes/gpu_sweep.py" and settings["epochs"] == 12
    assert settings["init"] == "efficientnet-lite0 (ImageNet)" and settings["learning_rate"] == 5e-4
    # the recipe's own selection, not the Trainer's unused default (roc_auc), and its moving average
    assert settings["metric_for_best_model"].startswith("source_mean_roc_auc (the recipe's own")
    assert settings["weights_moving_average"] == 0.995
    assert result["channel"]["test"]["n"] == 12
    assert not (out / "trainer_state.json").exists() and (out / "training_settings.json").is_file()
    released = AsffResNetForImageClassification.from_pretrained(out)
    assert released.config.ood_feature == "stages" and released.config.ood_threshold is not None
    for name, tensor in model.state_dict().items():  # the trained weights are released as they were
        torch.testing.assert_close(released.state_dict()[name], tensor)
    card = (out / "README.md").read_text()
    assert "trained from scratch" not in card.split("## Training")[0].lower()
    assert "detector on the pooled fused features and both fused stages' averages" in card  # ood_feature=stages


def test_skip_training_needs_a_model(image_folder, tmp_path):
    import train_hf

    with pytest.raises(SystemExit) as exit_info:
        train_hf.run(["--dataset", str(image_folder), "--skip_training", "true", "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2


def test_augment_moves_lesion_masks_with_the_image():
    """The lesion-focus runs' masks go through the same crop/flip/rotation as their images (nearest, so they stay
    binary): a white square's mask still covers the square's pixels after augmentation."""
    torch.manual_seed(0)
    images = torch.zeros(8, 3, 64, 64)
    images[:, :, 16:40, 20:48] = 1.0
    masks = images[:, 0] > 0.5
    hairs = gpu_sweep.hair_bank(4, 64, torch.Generator().manual_seed(0))
    out, moved = gpu_sweep.augment(images, False, hairs, masks)
    assert moved.dtype == torch.bool and moved.shape == masks.shape
    assert not torch.equal(moved, masks)  # the geometry changed
    agreement = ((out[:, 0] > 0.5) == moved).float().mean()
    assert agreement > 0.97  # only the bilinear/nearest boundary may differ


def test_packed_lesion_masks_are_the_projects_masks(tmp_path):
    """pack_device_data.py --lesion_masks stores lesion_focus.lesion_mask of each training image as the sweep trains
    on it (colour constancy, centre crop); gpu_sweep.Pack reads them back per image, all False elsewhere."""
    import io

    import pack_device_data
    from PIL import Image

    from modeling.lesion_focus import lesion_mask

    side = pack_device_data.SIDE
    yy, xx = np.mgrid[:side, :side + 32]
    skin = np.stack([np.full(yy.shape, 200), np.full(yy.shape, 160), np.full(yy.shape, 140)], -1)
    lesion = (yy - side / 2) ** 2 + (xx - (side + 32) / 2) ** 2 < (side / 5) ** 2
    image = np.where(lesion[..., None], skin * 0.35, skin).astype(np.uint8)
    items, blob = [], b""
    for index, split in enumerate(["train", "validation"]):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "WEBP", quality=95)
        data = buffer.getvalue()
        items.append({"id": f"s/{split}/{index}.jpg", "split": split, "source": "s", "label": index,
                      "offset": len(blob), "length": len(data), "size": [side + 32, side]})
        blob += data
    (tmp_path / "images.bin").write_bytes(blob)
    (tmp_path / "index.json").write_text(json.dumps({"labels": ["benign", "malignant"], "side": side,
                                                     "images": items}))
    pack_device_data.write_lesion_masks(tmp_path, workers=1)
    pack = gpu_sweep.Pack(tmp_path, smoke=False)
    assert pack.masks.shape == (2, side, side) and not pack.masks[1].any()  # validation: no mask
    square = pack.images(True, "crop")[0].permute(1, 2, 0).numpy()
    expected = lesion_mask(square)
    assert expected is not None and 0.05 < expected.mean() < 0.3
    np.testing.assert_array_equal(pack.masks[0].numpy(), expected)


def test_unpack_uses_the_runs_backbone_normalisation(tmp_path):
    from modeling.backbones import pretrained_backbone_defaults

    model = AsffResNetForImageClassification(tiny_config("channel"))
    model.save_pretrained(tmp_path / "models" / "lite2-run")
    gpu_sweep.pack_weights(tmp_path / "models", tmp_path / "out")
    run = {"run": {"backbone": "lite2", "fusion": "channel", "color_constancy": True, "resize": "crop", "batch": 64,
                   "epochs": 3, "lr": 5e-4, "seed": 1, "focus": 0.5}, "best_epoch": 2, "history": [{}] * 3,
           "train_images": 10, "train_s": 1.0, "device": "test"}
    target = unpack_device_models.unpack(tmp_path / "out", "lite2-run", tmp_path / "unpacked", run)
    processor = json.loads((target / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == pretrained_backbone_defaults("efficientnet-lite2")["image_mean"]


def test_unpack_refuses_to_guess_without_the_sweeps_recipes(tmp_path, monkeypatch):
    (tmp_path / "m.part0").write_bytes(b"")
    monkeypatch.setattr(sys, "argv", ["unpack_device_models.py", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="sweep_results"):
        unpack_device_models.main()


def test_seed_means_average_probabilities_on_the_same_images():
    import sweep_report

    a = {"ids": ["x", "y"], "logits": np.log([[0.9, 0.1], [0.2, 0.8]]).tolist(), "run": {}}
    b = {"ids": ["x", "y"], "logits": np.log([[0.5, 0.5], [0.4, 0.6]]).tolist(), "run": {}}
    np.testing.assert_allclose(sweep_report.probs(sweep_report.average_runs([a, b])), [[0.7, 0.3], [0.3, 0.7]])
    with pytest.raises(ValueError, match="different images"):
        sweep_report.average_runs([a, {**b, "ids": ["y", "x"]}])



def test_sweep_report_reads_a_folder_of_results_and_refuses_other_files(tmp_path, capsys):
    """`sweep_report.py results/<sweep>/raw` reads the folder's *.json.gz; a folder without them, a missing path or
    a file that is no sweep result is one usage line, not a traceback."""
    import zlib

    import sweep_report

    raw = tmp_path / "raw"
    raw.mkdir()
    for i in (1, 2):
        (raw / f"session{i}.json.gz").write_bytes(zlib.compress(json.dumps({"runs": {f"run{i}": {}}}).encode()))
    assert set(sweep_report.load([str(raw)])) == {"run1", "run2"}
    assert set(sweep_report.load([str(raw / "session2.json.gz")])) == {"run2"}
    (tmp_path / "notes.txt").write_text("not a result")
    for wrong, message in ((tmp_path, "holds no"), (tmp_path / "nowhere", "no such file"),
                           (tmp_path / "notes.txt", "not a result file")):
        with pytest.raises(SystemExit):
            sweep_report.main([str(wrong), "--out", str(tmp_path / "out")])
        assert message in capsys.readouterr().err

def test_jpeg_pack_keeps_each_sources_codec(tmp_path):
    """--codec jpeg: an ordinary JPEG keeps its own tables and chroma subsampling (reduced to --max_side); a
    near-lossless one is capped at quality 95 and not enlarged; the default WebP pack is as before (224 px)."""
    import io

    import pack_device_data
    from PIL import Image, JpegImagePlugin

    rng = np.random.default_rng(0)
    ordinary, lossless = tmp_path / "a.jpg", tmp_path / "b.jpg"
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(ordinary, quality=80, subsampling=2)
    Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(lossless, quality=100, subsampling=0)
    data, size = pack_device_data.encode(str(ordinary), 85, "jpeg", max_side=288)
    with Image.open(io.BytesIO(data)) as packed, Image.open(ordinary) as source:
        assert size == (384, 288) == packed.size
        assert packed.quantization == source.quantization and JpegImagePlugin.get_sampling(packed) == 2
    data, size = pack_device_data.encode(str(lossless), 85, "jpeg", max_side=288)
    with Image.open(io.BytesIO(data)) as packed:
        assert size == (224, 224) and JpegImagePlugin.get_sampling(packed) == 0
        assert packed.quantization == pack_device_data._quantization(95)
    data, size = pack_device_data.encode(str(ordinary), 85)
    assert size == (299, 224) and Image.open(io.BytesIO(data)).format == "WEBP"


def test_a_pack_in_pieces_reads_as_one(tmp_path):
    """A pack spilled over two device calls (--spill) is read as one images.bin; a missing piece is refused."""
    pack, spill = tmp_path / "pack", tmp_path / "spill"
    pack.mkdir()
    spill.mkdir()
    (spill / "images.bin.0").write_bytes(b"abc")
    (pack / "images.bin.1").write_bytes(b"de")
    assert gpu_sweep.read_images(pack, [spill]) == b"abcde"
    with pytest.raises(SystemExit, match="incomplete pack"):
        gpu_sweep.read_images(pack)


def test_lesion_masks_scale_to_a_larger_input():
    """A 288 px run uses the 224 px masks scaled (the centre crop covers the same field at every side)."""
    pack = gpu_sweep.Pack.__new__(gpu_sweep.Pack)
    pack.masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    pack.masks[0, 2:4, 4:8] = True
    scaled = pack.masks_at(16)
    assert scaled.shape == (1, 16, 16) and scaled.dtype == torch.bool
    assert scaled[0, 4:8, 8:16].all() and scaled.sum() == 4 * pack.masks.sum()
    assert pack.masks_at(8) is pack.masks
