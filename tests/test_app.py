"""The Gradio app. Served on a free local port with a tiny calibrated model that has an out-of-distribution score, and
driven through gradio_client: every endpoint, the OOD flag and score, the TTA spread, no-image errors, batches keyed by
unique names with the settings in the CSV, bad inputs (clear message, server keeps serving), unusual images,
concurrency, the command line. The threshold handler is driven directly (no server): the decision follows the
threshold from the cached result, and the Grad-CAM is recomputed only when the decision flips. The browser test
(test_browser.py) covers what only a page shows."""

import csv
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from app_fixtures import (
    BAD_INPUTS,
    calibrated_tiny_model,
    place_ood_threshold,
    served_app,
    write_bad_inputs,
    write_unusual_inputs,
)
from gradio_client import Client, handle_file
from helpers import lesion_image
from huggingface_hub import ModelCard, ModelCardData
from PIL import Image

import app
from modeling import presentation
from modeling.gradio_components import user_errors
from modeling.inference import OOD_WARNING, Prediction, load_classifier, predict
from modeling.ood_probes import synthetic_image

ROOT = Path(__file__).resolve().parents[1]
CARD_TEXT = "# Tiny test model\nTest AUROC: 0.5\n"
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app_files")
    rng = np.random.default_rng(7)
    paths = {f"lesion{i}.jpg": folder / f"lesion{i}.jpg" for i in range(3)}
    for i, path in enumerate(paths.values()):
        lesion_image(i % 2, rng, 48).save(path)
    # Noise for now; `loaded` replaces it with the synthetic image the model finds most out of distribution.
    paths["not_a_lesion.png"] = folder / "not_a_lesion.png"
    synthetic_image("noise", rng, 64).save(paths["not_a_lesion.png"])
    for label in ("benign", "malignant"):  # two different files that share a name
        (folder / label).mkdir()
        paths[f"{label}/1.jpg"] = folder / label / "1.jpg"
        lesion_image(int(label == "malignant"), rng, 48).save(paths[f"{label}/1.jpg"])
    return {**paths, **write_bad_inputs(folder / "bad"), **write_unusual_inputs(folder / "unusual")}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, files):
    """The calibrated tiny model (with a card) loaded; its OOD threshold placed so that not_a_lesion.png is flagged and
    lesion0.jpg is not."""
    model_dir = tmp_path_factory.mktemp("app_model") / "tiny-calibrated"
    shutil.copytree(calibrated_tiny_model(tmp_path_factory), model_dir)
    ModelCard.from_template(ModelCardData(license="apache-2.0"), template_str="---\n{{ card_data }}\n---\n" + CARD_TEXT
                            ).save(model_dir / "README.md")
    model, processor, info = load_classifier(model_dir)
    place_ood_threshold(model, processor, files["lesion0.jpg"], files["not_a_lesion.png"])
    return model, processor, info


@pytest.fixture(scope="module")
def server(loaded):
    with served_app(*loaded) as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return Client(server, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")),
                  analytics_enabled=False)


def confidences(label_output: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label_output["confidences"]}


def handler(demo, name: str):
    """The function behind one of the demo's events, by name, to drive it without a server."""
    return next(f.fn for f in demo.fns.values() if f.name == name)


# --------------------------------------------------------------------------- served, through gradio_client


@pytest.mark.slow
def test_api_lists_named_endpoints(client, loaded):
    api = client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == {"/predict", "/explain", "/batch"} and not api["unnamed_endpoints"]
    threshold = api["named_endpoints"]["/predict"]["parameters"][1]
    assert threshold["parameter_default"] == pytest.approx(loaded[2].decision_threshold)  # from the model config
    assert loaded[2].decision_threshold != 0.5  # calibration chose one, so the check above means something


@pytest.mark.slow
def test_about_shows_the_model_name_not_its_path_and_the_disclaimer_once(server, loaded):
    with urllib.request.urlopen(server + "config", timeout=30) as response:
        config = response.read().decode()
    info = loaded[2]
    assert config.count("NOT a diagnostic device") == 1  # the app chrome, once (this card carries none)
    assert "Test AUROC: 0.5" in config and f"`{info.name}`" in config
    assert str(Path(info.source).parent) not in config


@pytest.mark.slow
def test_predict_returns_calibrated_probabilities_and_the_json(client, files, loaded):
    model, processor, info = loaded
    probs, decision, result = client.predict(handle_file(files["lesion0.jpg"]), 0.5, False, api_name="/predict")
    expected = predict(model, processor, files["lesion0.jpg"], threshold=0.5)
    assert confidences(probs) == pytest.approx(expected.probabilities, abs=1e-5)  # calibrated: the temperature
    assert info.temperature != 1.0
    assert result["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)
    assert result["label"] == probs["label"] == expected.label and result["threshold"] == 0.5
    assert result["model"] == info.name and result["in_distribution"] is True and result["tta"] is False
    assert result["ood_score"] <= result["ood_threshold"] and result["spread"] is None
    assert "Prediction" in decision and "threshold 0.500" in decision and OOD_WARNING not in decision
    # The label honours the threshold on p(malignant).
    assert client.predict(handle_file(files["lesion0.jpg"]), 0.0, True, api_name="/predict")[0]["label"] == "malignant"
    assert client.predict(handle_file(files["lesion0.jpg"]), 1.0, False, api_name="/predict")[0]["label"] == "benign"


@pytest.mark.slow
def test_tta_spread_in_the_api_and_the_headline(client, files):
    _, decision, result = client.predict(handle_file(files["lesion1.jpg"]), 0.5, True, api_name="/predict")
    assert result["tta"] is True and result["spread"] >= 0
    low, high = result["interval"]
    assert low <= result["probabilities"]["malignant"] <= high
    assert f"± {result['spread']:.3f}" in decision and f"(range {low:.3f}–{high:.3f} over 8 views)" in decision


@pytest.mark.slow
def test_out_of_distribution_image_is_classified_flagged_and_greyed_out(client, files):
    image = handle_file(files["not_a_lesion.png"])
    probs, decision, result = client.predict(image, 0.5, False, api_name="/predict")
    assert result["in_distribution"] is False and result["ood_score"] > result["ood_threshold"]
    assert sum(confidences(probs).values()) == pytest.approx(1, abs=1e-4)  # still classified, probabilities shown
    assert OOD_WARNING in decision and "not-meaningful" in decision and "(not meaningful)" in decision
    explained = client.predict(image, 0.5, False, "fused", "gradcam", api_name="/explain")
    cam = explained[3]
    assert explained[2]["in_distribution"] is False and OOD_WARNING in explained[1] and Path(cam).is_file()


@pytest.mark.parametrize("api_name, args", [("/predict", (0.5, False)), ("/explain", (0.5, False, "fused", "gradcam"))])
@pytest.mark.slow
def test_no_image_is_a_clear_error(client, api_name, args):
    with pytest.raises(Exception, match="Upload an image first") as error:
        client.predict(None, *args, api_name=api_name)
    assert "Traceback" not in str(error.value)


@pytest.mark.parametrize("target, method", [("fused", "gradcam"), ("stage4", "gradcam++"), ("stage3", "eigencam")])
@pytest.mark.slow
def test_explain(client, files, target, method):
    probs, decision, result, cam, caption, plot, fusion_text, timing = client.predict(
        handle_file(files["lesion1.jpg"]), 0.5, target == "stage4", target, method, api_name="/explain")
    assert sum(confidences(probs).values()) == pytest.approx(1, abs=1e-4) and "Prediction" in decision
    assert result["cam_label"] == result["label"] == probs["label"]
    name = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "eigencam": "EigenCAM"}[method]  # the method's own name
    subject = (f"{name} (the same for every class)" if method == "eigencam"  # it ignores the class
               else f"{name} of *{result['label']}*")
    assert subject in timing and "no CAM" not in timing and "Warm colours" in caption
    assert (f"{name} of *{result['label']}*" in caption) == (method != "eigencam")
    width, height = Image.open(cam).size
    assert height > width  # the overlay with its colour scale under it
    assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image")
    assert "stage3" in fusion_text and "How to read the plot" in fusion_text and "Inference time" in timing


@pytest.mark.slow
def test_batch_unique_names_ood_rows_and_csv_settings(client, files, loaded):
    names = ["lesion0.jpg", "benign/1.jpg", "malignant/1.jpg", "not_a_lesion.png", "truncated.jpg",
             "not_an_image.jpg"]
    table, csv_path, summary = client.predict([handle_file(files[n]) for n in names], 0.5, True, api_name="/batch")
    assert table["headers"] == app.table_columns(loaded[2])
    assert table["headers"][:3] == ["file", "label", "in_distribution"]  # the flag beside the label, on a phone too
    rows = {row[0]: dict(zip(table["headers"], row, strict=True)) for row in table["data"]}
    assert set(rows) == {"lesion0.jpg", "1.jpg (1)", "1.jpg (2)", "not_a_lesion.png", "truncated.jpg",
                         "not_an_image.jpg"}
    assert "numbered in upload order" in summary and "1 flagged as out of distribution" in summary
    assert app.BATCH_OOD_NOTE in summary and "threshold 0.500" in summary
    assert rows["lesion0.jpg"]["label"] in ("benign", "malignant") and rows["lesion0.jpg"]["error"] == ""
    ood = rows["not_a_lesion.png"]
    assert rows["lesion0.jpg"]["in_distribution"] is True and ood["in_distribution"] is False
    assert ood["label"] in ("benign", "malignant") and ood["ood_score"] > loaded[0].config.ood_threshold
    assert rows["lesion0.jpg"]["p_spread"] != ""
    assert "truncated" in rows["truncated.jpg"]["error"] and "not an image" in rows["not_an_image.jpg"]["error"]
    with open(csv_path) as f:
        records = {r["file"]: r for r in csv.DictReader(f)}
    assert len(records) == 6
    assert {r["model"] for r in records.values()} == {loaded[2].name}
    assert {r["threshold"] for r in records.values()} == {"0.5"} and {r["tta"] for r in records.values()} == {"True"}
    ood = records["not_a_lesion.png"]
    assert ood["in_distribution"] == "False" and float(ood["ood_score"]) > loaded[0].config.ood_threshold
    assert records["lesion0.jpg"]["in_distribution"] == "True" and float(records["lesion0.jpg"]["p_spread"]) >= 0


@pytest.mark.parametrize("name", list(BAD_INPUTS))
@pytest.mark.slow
def test_bad_inputs_give_clear_errors_and_server_keeps_serving(client, files, name):
    for api_name, args in [("/predict", (0.5, False)), ("/explain", (0.5, False, "fused", "gradcam"))]:
        with pytest.raises(Exception, match=BAD_INPUTS[name]) as error:
            client.predict(handle_file(files[name]), *args, api_name=api_name)
        assert "Traceback" not in str(error.value)
    probs = client.predict(handle_file(files["lesion2.jpg"]), 0.5, False, api_name="/predict")[0]
    assert probs["label"] in ("benign", "malignant")


@pytest.mark.parametrize("name", ["rgba.png", "grey.png", "grey_alpha.png", "sixteen_bit.png", "cmyk.jpg",
                                  "exif_rotated.jpg"])
@pytest.mark.slow
def test_unusual_images_are_converted(client, files, name):
    probs, _, _, cam, *_ = client.predict(handle_file(files[name]), 0.5, False, "fused", "gradcam", api_name="/explain")
    assert probs["label"] in ("benign", "malignant") and Path(cam).is_file()


@pytest.mark.slow
def test_paths_outside_uploads_are_refused(server):
    """The image input hands its handler the uploaded path undecoded: Gradio must still refuse paths that were not
    uploaded (no reading of server files through the API)."""
    payload = {"data": [{"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}, 0.5, False]}
    request = urllib.request.Request(server + "gradio_api/call/predict", json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        event_id = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{server}gradio_api/call/predict/{event_id}", timeout=60) as response:
        stream = response.read().decode()
    assert "event: error" in stream and "confidences" not in stream


@pytest.mark.slow
def test_file_size_limit(client, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (21 * 1024 * 1024))  # over MAX_FILE_SIZE (20 MB)
    with pytest.raises(Exception, match="(?i)size|large"):
        client.predict(handle_file(big), 0.5, False, api_name="/predict")


@pytest.mark.slow
def test_concurrent_predicts(client, files):
    jobs = [client.submit(handle_file(files[f"lesion{i % 3}.jpg"]), 0.5, False, api_name="/predict")
            for i in range(12)]
    labels = [job.result(timeout=300)[0]["label"] for job in jobs]
    assert len(labels) == 12 and set(labels) <= {"benign", "malignant"}


# --------------------------------------------------------------------------- handlers, without a server


def test_threshold_change_uses_the_cached_result_and_refreshes_the_cam_on_a_flip(loaded, files, monkeypatch):
    """The decision follows the threshold from the session's cached probabilities; the model runs again only for
    the Grad-CAM of the new class when the decision flips."""
    demo = app.build_demo(*loaded)
    analyse, on_threshold = handler(demo, "analyse"), handler(demo, "on_threshold")
    *_, session = analyse(str(files["lesion0.jpg"]), 0.5, False, "fused", "gradcam")
    p = session["prediction"].probabilities["malignant"]
    calls = []
    real_explain = app.explain
    monkeypatch.setattr(app, "explain", lambda *a, **k: calls.append(k) or real_explain(*a, **k))

    same_side = min(p + 0.001, 1.0) if p < 0.5 else max(p - 0.001, 0.0)  # moves the threshold, keeps the decision
    probs, decision, result, cam, caption, timing, same = on_threshold(session, same_side)
    assert not calls and result["label"] == session["cam_label"] and f"threshold {same_side:.2f}" in decision
    assert same["prediction"].threshold == same_side and cam == caption == timing == gr.skip()  # CAM kept

    flipped_threshold = 1.0 if session["prediction"].label == "malignant" else 0.0
    probs, decision, result, cam, caption, timing, flipped = on_threshold(same, flipped_threshold)
    assert len(calls) == 1 and calls[0]["cam_class"] == loaded[0].config.label2id[result["label"]]
    assert result["label"] != session["prediction"].label == session["cam_label"]
    assert probs == (result["label"], session["prediction"].probabilities)  # the cached probabilities
    assert flipped["cam_label"] == result["cam_label"] == result["label"]
    against = f" against *{session['cam_label']}*"  # the default: the new class against the one before
    assert f"Grad-CAM of *{result['label']}*{against}" in caption
    assert f"Grad-CAM of *{result['label']}*{against}, recomputed" in timing
    assert isinstance(cam, np.ndarray) and "no CAM" not in timing

    *_, unchanged = on_threshold(flipped, flipped_threshold)  # the same threshold again: nothing to do
    assert len(calls) == 1


def test_a_threshold_typed_out_of_range_goes_back_with_a_warning(loaded, files):
    """The number box beside the slider takes any number: out of range, the slider goes back to the threshold the
    decision on screen uses (a warning says so) instead of the event failing and badging every result "Error"; an
    analysis given one (the API) fails with a message that names the setting."""
    demo = app.build_demo(*loaded)
    analyse, moved = handler(demo, "analyse"), handler(demo, "on_threshold_moved")
    *_, session = analyse(str(files["lesion0.jpg"]), 0.3, False, "fused", "gradcam")
    for typed in (1.5, -0.2, None):
        with pytest.warns(UserWarning, match="decision threshold"):
            *results, reset = moved(session, typed, None)
        assert reset["threshold"] == 0.3  # back where the decision on screen is
        assert results[1:] == [gr.skip()] * 6 and results[0][0] == session["prediction"].label  # nothing redone
    *results, reset = moved(session, 0.7, None)  # a valid one goes through as before
    assert reset == gr.skip() and results[-1]["prediction"].threshold == 0.7
    with pytest.warns(UserWarning, match="between 0 and 1; 2 was typed"):
        *_, reset = moved(None, 2, None)  # no image yet: back at the model's own threshold
    assert reset["threshold"] == loaded[2].decision_threshold
    with pytest.warns(UserWarning):
        again = moved(None, 2, None)[-1]
    assert again != reset  # a second request to the same value is still a change of the State
    threshold = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "threshold")
    with pytest.raises(gr.Error, match="between 0 and 1; 1.5 was typed"):
        threshold.preprocess(1.5)
    assert threshold.preprocess(0.25) == 0.25


def test_model_without_ood_score_says_the_check_is_not_available(tiny_model_dir, files):
    """The reference checkpoint has no OOD statistics yet: no warning, and a quiet note instead."""
    demo = app.build_demo(*load_classifier(tiny_model_dir))
    _, decision, result = handler(demo, "run_predict")(str(files["not_a_lesion.png"]), 0.5, False)
    assert result["in_distribution"] is None and result["ood_score"] is None
    assert presentation.OOD_NOT_AVAILABLE in decision and OOD_WARNING not in decision
    assert "not-meaningful" not in decision
    assert "not available for this model" in json.dumps(demo.get_config_file(), default=str)


def test_decision_headline():
    in_dist = Prediction({"benign": 0.38, "malignant": 0.62}, "malignant", 0.5, tta=True, views=8, spread=0.05,
                         interval=(0.55, 0.7), ood_score=1.0, ood_threshold=2.0)
    text = presentation.decision_html(in_dist)
    assert "p(malignant) = 0.620 ± 0.050 (range 0.550–0.700 over 8 views) ≥ threshold 0.500" in text
    assert "within the model's threshold" in text and OOD_WARNING not in text
    out = presentation.decision_html(Prediction({"benign": 0.7, "malignant": 0.3}, "benign", 0.4, ood_score=3.0,
                                       ood_threshold=2.0))
    assert OOD_WARNING in out and "(not meaningful)" in out and "p(malignant) = 0.300 < threshold 0.400" in out


@pytest.mark.parametrize("p, threshold, shown", [
    (0.44427, 0.4443, "p(malignant) = 0.44427 < threshold 0.44430"),  # 3 or 4 decimals would read as equal
    (0.44427, 0.4234604, "p(malignant) = 0.444 ≥ threshold 0.423"),
    (0.4212, 0.4234604, "p(malignant) = 0.421 < threshold 0.423"),
    (0.42345, 0.4234604, "p(malignant) = 0.4234 < threshold 0.4235"),
    (0.5, 0.5, "p(malignant) = 0.500 ≥ threshold 0.500"),
    (0.3704320, 0.3704321, "p(malignant) = 0.3704320 < threshold 0.3704321"),  # a threshold typed to 7 decimals
])
def test_the_shown_probability_and_threshold_compare_as_the_decision_did(p, threshold, shown):
    """Rounded for display, a probability just below the threshold must not read as equal to it or above it: both
    get as many decimals as it takes (3 at least)."""
    label = "malignant" if p >= threshold else "benign"
    text = presentation.decision_html(Prediction({"benign": 1 - p, "malignant": p}, label, threshold))
    assert shown in text, text


def test_unique_names():
    names, numbered = presentation.unique_names(["/c/a1/1.jpg", "/c/b2/2.jpg", "/c/c3/1.jpg"])
    assert names == ["1.jpg (1)", "2.jpg", "1.jpg (2)"] and numbered
    assert presentation.unique_names(["/c/a/1.jpg", "/c/b/2.jpg"]) == (["1.jpg", "2.jpg"], False)


def test_examples_are_picked_from_a_folder(tmp_path):
    from helpers import make_image_folder

    folder = make_image_folder(tmp_path / "examples", {"test": 10})
    examples = app.pick_examples(folder, limit=4)
    assert len(examples) == 4 and {p.parent.name for p in examples} == {"benign", "malignant"}
    with pytest.raises(SystemExit):
        app.pick_examples(tmp_path / "nothing")


def test_missing_model_message(tmp_path):
    with pytest.raises(SystemExit) as error:
        app.main(["--model", str(tmp_path / "no_model_here")])
    assert "Could not load a model" in str(error.value.code) and "train_hf.py" in str(error.value.code)
    (tmp_path / "models" / "asff-tiny").mkdir(parents=True)
    (tmp_path / "models" / "asff-tiny" / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as error:  # a typo: named at once, with the model meant
        app.main(["--model", str(tmp_path / "models" / "asff-tny")])
    assert f"did you mean {tmp_path / 'models' / 'asff-tiny'}?" in str(error.value.code)


@pytest.mark.slow
def test_cli_without_checkpoint_exits_cleanly(tmp_path):
    """`python app.py` where no reference checkpoint sits beside it (a copy of app.py in an empty folder; the
    repository's modeling package on the path): a clear message and a non-zero exit, no traceback."""
    shutil.copy2(ROOT / "app.py", tmp_path / "app.py")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "app.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode != 0
    assert "No model at" in result.stderr and "train_hf.py" in result.stderr and "--model" in result.stderr
    assert "Traceback" not in result.stderr


def test_only_bad_input_is_shown_as_its_message():
    """An unusable image gets its own message; any other exception is a bug: logged, and a generic message shown
    (a ValueError from a bug must not pass for a user error)."""
    from modeling.image_utils import ImageLoadError

    def bad_input():
        raise ImageLoadError("x.jpg: the file is empty (0 bytes).")

    def bug():
        raise ValueError("operands could not be broadcast together")

    with pytest.raises(gr.Error, match="empty"):
        user_errors(bad_input)()
    with pytest.raises(gr.Error, match="Internal error") as error:
        user_errors(bug)()
    assert "broadcast" not in str(error.value)


def test_a_cam_caption_names_its_method():
    caption = presentation.cam_caption("malignant", "fused", "layercam", target_name="fused features (after ASFF), 7x7")
    assert caption.startswith("**LayerCAM of *malignant*** (fused features (after ASFF), 7x7, layercam)")
    assert "Grad-CAM of" not in caption
    assert presentation.cam_caption("benign", "stage4", "gradcam").startswith("**Grad-CAM of *benign***")


def test_a_contrast_cam_caption_names_both_classes_and_says_what_the_colours_mean():
    caption = presentation.cam_caption("malignant", "fused", "gradcam", against="benign")
    assert caption.startswith("**Grad-CAM of *malignant* against *benign***")
    assert "favoured **malignant** over **benign**" in caption and "This map is empty" not in caption
    empty = presentation.cam_caption("malignant", "fused", "gradcam", empty=True, against="benign")
    assert "no region favoured **malignant** over **benign**" in empty
    # EigenCAM ignores the class
    assert "against" not in presentation.cam_caption("malignant", "fused", "eigencam", against="benign")


def test_the_cam_is_against_the_other_class_by_default_and_on_a_threshold_flip(loaded, files):
    """The Classify tab's default: the margin, named in the caption, the timing line and the JSON; unticked, the
    decided class's own score; a threshold flip recomputes it with the same setting."""
    demo = app.build_demo(*loaded)
    analyse, on_threshold = handler(demo, "analyse"), handler(demo, "on_threshold")
    probs, decision, result, cam, caption, plot, fusion, timing, session = analyse(
        str(files["lesion0.jpg"]), 0.5, False, "fused", "gradcam")
    label = result["label"]
    other = next(name for name in ("benign", "malignant") if name != label)
    assert result["cam_against"] == other and session["contrast"] is True
    assert f"Grad-CAM of *{label}* against *{other}*" in caption and f"against *{other}*" in timing
    *_, flipped = on_threshold(session, 1.0 if label == "malignant" else 0.0)
    assert flipped["cam_label"] == other and flipped["cam_against"] == label
    _, _, plain, _, plain_caption, *_ = analyse(str(files["lesion0.jpg"]), 0.5, False, "fused", "gradcam", None,
                                                False)
    assert "cam_against" not in plain and "against" not in plain_caption.split(".")[0]


def test_eigencam_is_not_said_to_explain_a_class(tiny_model_dir, files):
    """EigenCAM ignores the class (the same map for every decision): the caption, the colour scale and the timing
    line say so instead of naming the decided class."""
    demo = app.build_demo(*load_classifier(tiny_model_dir))
    *_, cam, caption, _, _, timing, session = handler(demo, "analyse")(str(files["lesion1.jpg"]), 0.5, False,
                                                                        "fused", "eigencam")
    assert "the same for every class" in caption and "Grad-CAM of" not in caption
    assert "EigenCAM (the same for every class)" in timing and "Grad-CAM of" not in timing
    gradcam = handler(demo, "analyse")(str(files["lesion1.jpg"]), 0.5, False, "fused", "gradcam")
    assert cam.shape == gradcam[3].shape and not np.array_equal(cam, gradcam[3])  # its scale names no class
