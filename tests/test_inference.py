"""modeling.inference, modeling.image_utils and the batch CLI: loading, bad inputs, conversions, calibrated
prediction with TTA and its spread, the decision rule, batches with a bad file."""

import csv
import shutil

import numpy as np
import pytest
import torch
from app_fixtures import BAD_INPUTS, save_tiny_model, write_bad_inputs, write_unusual_inputs
from helpers import TINY_IMAGE_SIZE, lesion_image, make_image_folder
from huggingface_hub import ModelCard, ModelCardData
from PIL import Image

from modeling import AsffResNetConfig
from modeling.decision import calibrated_probabilities, decide, decide_batch
from modeling.image_utils import ImageLoadError, load_image
from modeling.inference import load_classifier, pixel_values, predict, predict_batch, tta_views
from modeling.predict import main as predict_cli
from modeling.prediction import ModelNotFoundError, check_model_source

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


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
    assert info.decision_threshold == 0.5 and info.card_text is None and info.name == tiny_model_dir.name
    assert processor(images=lesion_image(0, np.random.default_rng(0)), return_tensors="pt")["pixel_values"].shape[
        -1
    ] == TINY_IMAGE_SIZE
    assert {mode: info.fusion_mode for mode, (_, _, info) in loaded.items()} == {
        "channel": "channel", "spatial": "spatial", "none": "none"}


def test_decision_rule_from_config_not_card(tmp_path):
    """The config is the decision rule's one home; the card is shown, never read for the decision."""
    folder = save_tiny_model(tmp_path / "with_card")
    card = ModelCard.from_template(ModelCardData(license="apache-2.0", decision_threshold=0.31),
                                   template_str="---\n{{ card_data }}\n---\n# Tiny model\nAUROC 0.5 on nothing.\n")
    card.save(folder / "README.md")
    model, _, info = load_classifier(folder)
    assert info.decision_threshold == 0.5 and info.temperature == 1.0 and info.ood_threshold is None
    assert "AUROC 0.5" in info.card_text and info.name == "with_card"
    config = AsffResNetConfig.from_pretrained(folder)
    config.decision_threshold, config.temperature = 0.31, 2.0
    config.save_pretrained(folder)
    model, _, info = load_classifier(folder)
    assert info.decision_threshold == pytest.approx(0.31) and info.temperature == 2.0


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
    probs = predict(model, processor, image).probabilities
    assert list(probs) == ["benign", "malignant"] and sum(probs.values()) == pytest.approx(1, abs=1e-5)
    result = predict(model, processor, image, tta=True)
    tta = result.probabilities
    assert sum(tta.values()) == pytest.approx(1, abs=1e-5)
    # TTA is the mean over the 8 dihedral views.
    views = tta_views(pixel_values(processor, image))
    assert views.shape[0] == 8
    with torch.no_grad():
        mean = model(pixel_values=views).logits.softmax(-1).mean(0)
    assert tta["malignant"] == pytest.approx(float(mean[1]), abs=1e-5)
    per_view = model(pixel_values=views).logits.softmax(-1)[:, 1]
    assert result.tta and result.spread == pytest.approx(float(per_view.std(unbiased=False)), abs=1e-5)
    assert result.interval == pytest.approx((float(per_view.min()), float(per_view.max())), abs=1e-5)
    # A symmetric image looks the same in every view: TTA changes nothing, and the spread is zero.
    flat = Image.new("RGB", (40, 40), (180, 120, 110))
    flat_tta = predict(model, processor, flat, tta=True)
    assert flat_tta.probabilities["malignant"] == pytest.approx(
        predict(model, processor, flat).probabilities["malignant"], abs=1e-5)
    assert flat_tta.spread == pytest.approx(0, abs=1e-6)
    assert predict(model, processor, image).spread is None


def test_calibrated_probabilities_and_decision(loaded, image):
    """Probabilities are softmax(logits / temperature); the label follows the threshold on calibrated p."""
    model, processor, _ = loaded["channel"]
    with torch.no_grad():
        logits = model(pixel_values=pixel_values(processor, image)).logits[0]
    model.config.temperature = 3.0
    try:
        result = predict(model, processor, image)
        assert result.probabilities["malignant"] == pytest.approx(float((logits / 3).softmax(-1)[1]), abs=1e-6)
        p = result.probabilities["malignant"]
        assert predict(model, processor, image, threshold=p).label == "malignant"
        assert predict(model, processor, image, threshold=p + 1e-4).label == "benign"
        model.config.decision_threshold = p - 1e-4  # the config's threshold is the default
        assert predict(model, processor, image).label == "malignant" and predict(model, processor, image).threshold == (
            pytest.approx(p - 1e-4))
    finally:
        model.config.temperature, model.config.decision_threshold = 1.0, 0.5


def test_decide():
    assert decide([0.6, 0.4], 0.5) == 0 and decide([0.6, 0.4], 0.4) == 1 and decide([0.6, 0.4], 0.0) == 1
    assert decide(torch.tensor([0.1, 0.2, 0.7]), 0.9) == 2  # multi-class: argmax
    assert decide_batch(np.array([[0.6, 0.4], [0.3, 0.7]]), 0.5).tolist() == [0, 1]
    with pytest.raises(ValueError, match="must be"):
        decide_batch(np.array([0.6, 0.4]))
    with pytest.raises(ValueError, match="temperature must be positive"):
        calibrated_probabilities(torch.zeros(2), 0.0)


# --------------------------------------------------------------------------- batch and CLI


def test_predict_batch_with_bad_file(loaded, tmp_path, bad_files):
    model, processor, _ = loaded["channel"]
    folder = make_image_folder(tmp_path / "images", {"test": 3})
    paths = sorted((folder / "test").rglob("*.jpg"))
    paths.insert(2, bad_files["truncated.jpg"])
    names = [p.relative_to(tmp_path).as_posix() for p in paths[:2]] + ["bad.jpg"] + [
        p.relative_to(tmp_path).as_posix() for p in paths[3:]]
    rows = predict_batch(model, processor, paths, threshold=0.0, batch_size=4, names=names, model_id="tiny")
    assert [r["file"] for r in rows] == names  # e.g. images/test/benign/0.jpg: benign/0.jpg and malignant/0.jpg differ
    assert all(r["model"] == "tiny" and r["threshold"] == 0.0 and r["tta"] is False for r in rows)
    bad = rows[2]
    assert "truncated" in bad["error"] and bad["p_malignant"] is None and bad["label"] == ""
    good = [r for r in rows if not r["error"]]
    assert len(good) == 6 and all(r["label"] == "malignant" for r in good)  # threshold 0
    expected = predict(model, processor, paths[0])
    assert rows[0]["p_malignant"] == pytest.approx(expected.probabilities["malignant"], abs=1e-5)
    assert rows[0]["in_distribution"] is None and rows[0]["ood_score"] is None  # this model has no OOD score


def test_cli_writes_csv(tiny_model_dir, tmp_path, bad_files, capsys):
    folder = make_image_folder(tmp_path / "images", {"test": 2})
    (folder / "test" / "broken.jpg").write_bytes(bad_files["not_an_image.jpg"].read_bytes())
    out = tmp_path / "out" / "preds.csv"
    assert predict_cli([str(folder), "--model", str(tiny_model_dir), "--out", str(out), "--tta",
                        "--threshold", "0.4"]) == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and list(rows[0]) == ["file", "label", "p_benign", "p_malignant", "p_spread",
                                                "in_distribution", "ood_score", "error", "model", "threshold", "tta",
                                                "backend"]
    assert all(r["model"] == tiny_model_dir.name and r["threshold"] == "0.4" and r["tta"] == "True" for r in rows)
    assert all(r["backend"] == "torch" for r in rows)  # the directory has no ONNX files
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


def test_cli_refuses_a_threshold_that_is_not_a_probability(tmp_path, tiny_model_dir, capsys):
    make_image_folder(tmp_path / "imgs", {"test": 1})
    for value, said in (("1.5", "between 0 and 1; got 1.5"), ("-0.1", "between 0 and 1"), ("abc", "not a number")):
        with pytest.raises(SystemExit) as error:
            predict_cli([str(tmp_path / "imgs"), "--model", str(tiny_model_dir), "--threshold", value])
        assert error.value.code == 2 and said in capsys.readouterr().err
    with pytest.raises(ValueError, match="between 0 and 1"):
        decide([0.3, 0.7], 1.5)  # the library's rule refuses it too (pipeline, app, reports)


def test_cli_refuses_a_threshold_for_a_model_of_more_than_two_classes(tmp_path, capsys):
    """A multi-class model decides by the most probable class: a --threshold would be written into the CSV and not
    used."""
    from helpers import tiny_config

    from modeling import AsffResNetForImageClassification
    from modeling.image_processing import build_image_processor

    model_dir = tmp_path / "three"
    id2label = {0: "keratosis", 1: "melanoma", 2: "nevus"}
    AsffResNetForImageClassification(tiny_config(id2label=id2label, label2id={v: k for k, v in id2label.items()})
                                     ).save_pretrained(model_dir)
    build_image_processor(TINY_IMAGE_SIZE).save_pretrained(model_dir)
    make_image_folder(tmp_path / "imgs", {"test": 1})
    with pytest.raises(SystemExit) as error:
        predict_cli([str(tmp_path / "imgs"), "--model", str(model_dir), "--threshold", "0.3"])
    assert error.value.code == 2 and "--threshold applies to two-class models" in capsys.readouterr().err
    assert predict_cli([str(tmp_path / "imgs"), "--model", str(model_dir), "--out", str(tmp_path / "p.csv")]) == 0


def test_a_mistyped_model_path_is_named_at_once_with_the_nearest_model(tmp_path, tiny_model_dir, capsys,
                                                                        monkeypatch):
    """A path meant as local that is not there: a clear error without a Hub lookup (offline, transformers would wait
    for the network and report a connection error). Hub ids are left to the Hub."""
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "asff-tiny")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"did you mean models/asff-tiny\?"):
        load_classifier("models/asff-tny")
    with pytest.raises(ModelNotFoundError, match="model directories in models: asff-tiny"):
        check_model_source("models/something-else")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        check_model_source(models / "asff-tiny" / "config.json")
    for local in ("./absent", "/no/such/dir", "a/b/c", "~/absent-model"):
        with pytest.raises(ModelNotFoundError, match="No model directory"):
            check_model_source(local)
    for hub_id in ("microsoft/resnet-50", "resnet-50", models / "asff-tiny"):
        check_model_source(hub_id)  # a Hub id, or a model directory: no error
    make_image_folder(tmp_path / "imgs", {"test": 1})
    with pytest.raises(SystemExit) as error:
        predict_cli([str(tmp_path / "imgs"), "--model", "models/asff-tny"])
    assert error.value.code == 1 and "did you mean models/asff-tiny?" in capsys.readouterr().err


def test_prediction_at_another_threshold(loaded, image):
    """The app re-decides cached predictions when the threshold moves: the same rule, the rest unchanged."""
    model, processor, _ = loaded["channel"]
    result = predict(model, processor, image, tta=True)
    p = result.probabilities["malignant"]
    assert result.views == 8 and predict(model, processor, image).views == 1
    assert result.at_threshold(p).label == "malignant" and result.at_threshold(p + 1e-4).label == "benign"
    moved = result.at_threshold(0.0)
    assert moved.threshold == 0.0 and moved.probabilities == result.probabilities and moved.spread == result.spread
    assert moved.as_dict()["views"] == 8
