"""modeling.explain and the batch CLI, without Gradio: loading, bad inputs, conversions, prediction with TTA,
Grad-CAM targets and methods on each fusion mode, fusion figures, batch with a bad file."""

import csv
import threading

import numpy as np
import pytest
import torch
from app_fixtures import BAD_INPUTS, save_tiny_model, write_bad_inputs, write_unusual_inputs
from helpers import TINY_IMAGE_SIZE, lesion_image, make_image_folder
from huggingface_hub import ModelCard, ModelCardData
from matplotlib.figure import Figure
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from modeling.explain import (
    CAM_METHODS,
    CAM_TARGETS,
    MIN_OVERLAY_SIDE,
    ImageLoadError,
    LogitsOnly,
    cam_overlay,
    cam_target_layer,
    decide,
    explain,
    fusion_figure,
    load_classifier,
    load_image,
    pixel_values,
    predict,
    predict_batch,
    tta_views,
)
from modeling.image_processing import build_image_processor
from modeling.predict import main as predict_cli

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture(scope="session")
def loaded(tmp_path_factory):
    """{fusion_mode: (model, processor, info)} for tiny saved models of every mode."""
    root = tmp_path_factory.mktemp("explain_models")
    return {mode: load_classifier(save_tiny_model(root / mode, mode)) for mode in ("channel", "spatial", "none")}


@pytest.fixture(scope="module")
def image():
    return lesion_image(1, np.random.default_rng(3), size=48)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return write_bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def unusual_files(tmp_path_factory):
    return write_unusual_inputs(tmp_path_factory.mktemp("unusual"))


# --------------------------------------------------------------------------- loading


def test_load_classifier(loaded, tiny_model_dir):
    model, processor, info = load_classifier(tiny_model_dir)
    assert not model.training and model.dtype == torch.float32
    assert not any(p.requires_grad for p in model.parameters())
    assert info.fusion_mode == "channel" and info.image_size == TINY_IMAGE_SIZE
    assert info.id2label == {0: "benign", 1: "malignant"}
    assert info.decision_threshold == 0.5 and info.card_text is None
    assert processor(images=lesion_image(0, np.random.default_rng(0)), return_tensors="pt")["pixel_values"].shape[
        -1
    ] == TINY_IMAGE_SIZE
    assert {mode: info.fusion_mode for mode, (_, _, info) in loaded.items()} == {
        "channel": "channel", "spatial": "spatial", "none": "none"}


def test_threshold_and_text_from_model_card(tmp_path):
    folder = save_tiny_model(tmp_path / "with_card")
    card = ModelCard.from_template(ModelCardData(license="apache-2.0", decision_threshold=0.31),
                                   template_str="---\n{{ card_data }}\n---\n# Tiny model\nAUROC 0.5 on nothing.\n")
    card.save(folder / "README.md")
    model, _, info = load_classifier(folder)
    assert info.decision_threshold == pytest.approx(0.31) and model.decision_threshold == pytest.approx(0.31)
    assert "AUROC 0.5" in info.card_text


def test_load_classifier_missing_dir(tmp_path):
    with pytest.raises(OSError):
        load_classifier(tmp_path / "nothing_here")


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_inputs_give_clear_errors(bad_files, name):
    with pytest.raises(ImageLoadError, match=BAD_INPUTS[name]) as error:
        load_image(bad_files[name])
    assert isinstance(error.value, ValueError) and name in str(error.value)
    with pytest.raises(ImageLoadError, match=BAD_INPUTS[name]):
        load_image(bad_files[name].read_bytes())


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "absent.jpg")


@pytest.mark.parametrize(
    "name, note",
    [("rgba.png", "white"), ("grey.png", "greyscale"), ("grey_alpha.png", "white"), ("sixteen_bit.png", "8-bit"),
     ("cmyk.jpg", "CMYK"), ("palette.gif", None), ("exif_rotated.jpg", "EXIF")],
)
def test_unusual_images_become_rgb(unusual_files, name, note):
    notes = []
    image = load_image(unusual_files[name], notes)
    assert image.mode == "RGB"
    assert any(note in n for n in notes) if note else notes == []
    if name == "rgba.png":  # fully transparent: composited on white
        assert np.asarray(image).min() == 255
    if name == "sixteen_bit.png":  # 16-bit values scaled, not clipped to 255
        grey = np.asarray(Image.open(unusual_files["grey.png"]), np.float64).ravel()
        assert np.corrcoef(np.asarray(image)[..., 0].ravel(), grey)[0, 1] > 0.999
    if name == "exif_rotated.jpg":  # stored 64x32 red|blue, tagged 90 degrees clockwise: upright 32x64, red on top
        assert image.size == (32, 64)
        pixels = np.asarray(image).astype(int)
        assert pixels[5, 16, 0] > 150 > pixels[5, 16, 2] and pixels[58, 16, 2] > 150 > pixels[58, 16, 0]


def test_high_bit_depth_and_in_memory_inputs():
    values = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.int32)
    image = load_image(Image.fromarray(values, mode="I"))
    assert image.mode == "RGB" and np.asarray(image).max() == 255 and np.asarray(image).min() == 0
    rgb = lesion_image(0, np.random.default_rng(0))
    assert np.array_equal(np.asarray(load_image(rgb)), np.asarray(rgb))


# --------------------------------------------------------------------------- prediction


def test_predict_and_tta(loaded, image):
    model, processor, _ = loaded["channel"]
    probs = predict(model, processor, image)
    assert list(probs) == ["benign", "malignant"] and sum(probs.values()) == pytest.approx(1, abs=1e-5)
    tta = predict(model, processor, image, tta=True)
    assert sum(tta.values()) == pytest.approx(1, abs=1e-5)
    # TTA is the mean over the 8 dihedral views.
    views = tta_views(pixel_values(processor, image))
    assert views.shape[0] == 8
    with torch.no_grad():
        mean = model(pixel_values=views).logits.softmax(-1).mean(0)
    assert tta["malignant"] == pytest.approx(float(mean[1]), abs=1e-5)
    # A symmetric image looks the same in every view: TTA changes nothing.
    flat = Image.new("RGB", (40, 40), (180, 120, 110))
    assert predict(model, processor, flat, tta=True)["malignant"] == pytest.approx(
        predict(model, processor, flat)["malignant"], abs=1e-5)


def test_decide():
    assert decide([0.6, 0.4], 0.5) == 0 and decide([0.6, 0.4], 0.4) == 1 and decide([0.6, 0.4], 0.0) == 1
    assert decide(torch.tensor([0.1, 0.2, 0.7]), 0.9) == 2  # multi-class: argmax


# --------------------------------------------------------------------------- Grad-CAM and fusion


@pytest.mark.parametrize("mode", ["channel", "spatial", "none"])
@pytest.mark.parametrize("target", list(CAM_TARGETS))
def test_explain_targets(loaded, image, mode, target):
    model, processor, _ = loaded[mode]
    result = explain(model, processor, image, target=target, threshold=0.0)
    assert result.cam_overlay.dtype == np.uint8 and result.cam_overlay.shape == (MIN_OVERLAY_SIDE, MIN_OVERLAY_SIDE, 3)
    assert result.cam.shape == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE) and 0 <= result.cam.min() <= result.cam.max() <= 1
    assert result.label == "malignant"  # threshold 0: always the positive class
    assert result.probabilities == pytest.approx(predict(model, processor, image), abs=1e-5)
    assert result.timing_ms["total"] > 0
    if mode == "channel":
        assert result.fusion_weights.shape == (model.config.fusion_channels,)
        assert isinstance(result.fusion_figure, Figure) and len(result.fusion_figure.axes) == 2
    elif mode == "spatial":
        assert result.fusion_weights.shape[0] == 2 and isinstance(result.fusion_figure, Figure)
    else:
        assert result.fusion_weights is None and result.fusion_figure is None and "no fusion" in result.fusion_message


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_explain_methods(loaded, image, method):
    model, processor, _ = loaded["spatial"]
    result = explain(model, processor, image, method=method, threshold=1.01)
    assert result.label == "benign" and result.method == method  # threshold above 1: never positive
    assert result.cam_overlay.shape == (MIN_OVERLAY_SIDE, MIN_OVERLAY_SIDE, 3) and np.isfinite(result.cam).all()


@pytest.mark.parametrize("target", ["fused", "stage3"])
def test_cam_matches_plain_pytorch_grad_cam(loaded, image, target):
    """explain cuts the graph at the target layer (frozen weights): the CAM must equal pytorch-grad-cam's own, run
    on a copy with trainable weights and a full backward pass, for the predicted class."""
    model, processor, _ = loaded["channel"]
    result = explain(model, processor, image, target=target)
    trainable = type(model)(model.config).eval()
    trainable.load_state_dict(model.state_dict())
    inputs = pixel_values(processor, image)
    with GradCAM(LogitsOnly(trainable), [cam_target_layer(trainable, target)[0]]) as cam:
        label = model.config.label2id[result.label]
        expected = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(label)])[0]
    np.testing.assert_allclose(result.cam, expected, atol=1e-4)


def test_explain_tta_and_errors(loaded, image):
    model, processor, _ = loaded["channel"]
    result = explain(model, processor, image, tta=True, method="eigencam")
    assert result.probabilities == pytest.approx(predict(model, processor, image, tta=True), abs=1e-5)
    assert "tta" in result.timing_ms
    with pytest.raises(ValueError, match="unknown CAM target"):
        explain(model, processor, image, target="stage2")
    with pytest.raises(ValueError, match="unknown CAM method"):
        explain(model, processor, image, method="scorecam")
    with pytest.raises(ImageLoadError):
        explain(model, processor, b"")


def test_explain_is_thread_safe(loaded, image):
    model, processor, _ = loaded["spatial"]
    expected = explain(model, processor, image).cam
    results = [None] * 6

    def work(i):
        results[i] = explain(model, processor, image).cam

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for cam in results:
        np.testing.assert_allclose(cam, expected, atol=1e-6)


def test_cam_overlay_sizes():
    rng = np.random.default_rng(0)
    small = cam_overlay(rng.random((32, 32, 3)), rng.random((32, 32)))
    assert small.shape == (MIN_OVERLAY_SIDE, MIN_OVERLAY_SIDE, 3) and small.dtype == np.uint8
    assert cam_overlay(rng.random((256, 300, 3)), rng.random((256, 300))).shape == (256, 300, 3)  # not resized


def test_fusion_figures():
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(64))
    channel = fusion_figure(w)
    assert isinstance(channel, Figure) and len(channel.axes) == 2
    alpha = torch.rand(1, 4, 4)
    spatial = fusion_figure(torch.cat([alpha, 1 - alpha]), image=rng.random((32, 32, 3)))
    assert isinstance(spatial, Figure) and len(spatial.axes) == 2  # image + colour bar
    assert isinstance(fusion_figure(torch.cat([alpha, 1 - alpha])), Figure)  # no image
    assert fusion_figure(None) is None
    with pytest.raises(ValueError, match="fusion weights"):
        fusion_figure(np.ones((3, 4, 4)))


def test_non_asff_model_predicts_and_explains(tmp_path, image):
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8, layer_type="basic",
                          num_labels=2, id2label={0: "benign", 1: "malignant"}, label2id={"benign": 0, "malignant": 1})
    ResNetForImageClassification(config).save_pretrained(tmp_path)
    build_image_processor(TINY_IMAGE_SIZE).save_pretrained(tmp_path)
    model, processor, info = load_classifier(tmp_path)
    assert info.fusion_mode is None
    assert sum(predict(model, processor, image).values()) == pytest.approx(1, abs=1e-5)
    result = explain(model, processor, image, target="stage3")  # falls back to the last convolution
    assert result.cam_overlay.shape == (MIN_OVERLAY_SIDE, MIN_OVERLAY_SIDE, 3)
    assert result.fusion_figure is None and "not an ASFF-ResNet" in result.fusion_message


# --------------------------------------------------------------------------- batch and CLI


def test_predict_batch_with_bad_file(loaded, tmp_path, bad_files):
    model, processor, _ = loaded["channel"]
    folder = make_image_folder(tmp_path / "images", {"test": 3})
    paths = sorted((folder / "test").rglob("*.jpg"))
    paths.insert(2, bad_files["truncated.jpg"])
    rows = predict_batch(model, processor, paths, threshold=0.0, batch_size=4)
    assert [r["file"] for r in rows] == [p.name for p in paths]
    bad = rows[2]
    assert "truncated" in bad["error"] and bad["p_malignant"] is None and bad["label"] == ""
    good = [r for r in rows if not r["error"]]
    assert len(good) == 6 and all(r["label"] == "malignant" for r in good)  # threshold 0
    expected = predict(model, processor, paths[0])
    assert rows[0]["p_malignant"] == pytest.approx(expected["malignant"], abs=1e-5)


def test_cli_writes_csv(tiny_model_dir, tmp_path, bad_files, capsys):
    folder = make_image_folder(tmp_path / "images", {"test": 2})
    (folder / "test" / "broken.jpg").write_bytes(bad_files["not_an_image.jpg"].read_bytes())
    out = tmp_path / "out" / "preds.csv"
    assert predict_cli([str(folder), "--model", str(tiny_model_dir), "--out", str(out), "--tta",
                        "--threshold", "0.4"]) == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and list(rows[0]) == ["file", "p_benign", "p_malignant", "label", "error"]
    assert {r["file"] for r in rows} >= {"test/broken.jpg", "test/benign/0.jpg", "test/malignant/1.jpg"}
    broken = next(r for r in rows if r["file"] == "test/broken.jpg")
    assert "not an image" in broken["error"]
    for row in rows:
        if not row["error"]:
            assert row["label"] == ("malignant" if float(row["p_malignant"]) >= 0.4 else "benign")
    assert "5 files" in capsys.readouterr().out


def test_cli_errors(tmp_path, tiny_model_dir):
    with pytest.raises(SystemExit):
        predict_cli([str(tmp_path / "absent"), "--model", str(tiny_model_dir)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        predict_cli([str(tmp_path / "empty"), "--model", str(tiny_model_dir)])
    make_image_folder(tmp_path / "imgs", {"test": 1})
    with pytest.raises(SystemExit) as error:
        predict_cli([str(tmp_path / "imgs"), "--model", str(tmp_path / "no_model")])
    assert error.value.code == 1
