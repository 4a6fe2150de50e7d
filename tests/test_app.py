"""The Gradio app, served on a free local port with a tiny model, driven through gradio_client: every endpoint, the
bad inputs (clear message, server keeps serving), unusual images, concurrency, the command line."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from app_fixtures import BAD_INPUTS, free_port, write_bad_inputs, write_unusual_inputs
from helpers import lesion_image
from gradio_client import Client, handle_file
from huggingface_hub import ModelCard, ModelCardData

import app
from modeling.explain import load_classifier

ROOT = Path(__file__).resolve().parents[1]
CARD_THRESHOLD = 0.42
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app_files")
    rng = np.random.default_rng(7)
    paths = {f"lesion{i}.jpg": folder / f"lesion{i}.jpg" for i in range(3)}
    for i, path in enumerate(paths.values()):
        lesion_image(i % 2, rng, 48).save(path)
    return {**paths, **write_bad_inputs(folder / "bad"), **write_unusual_inputs(folder / "unusual")}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """The app on a free port (in this process), with a model card that sets the decision threshold."""
    model_dir = tmp_path_factory.mktemp("app_model") / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    card = ModelCard.from_template(ModelCardData(license="apache-2.0", decision_threshold=CARD_THRESHOLD),
                                   template_str="---\n{{ card_data }}\n---\n# Tiny test model\nTest AUROC: 0.5\n")
    card.save(model_dir / "README.md")
    demo = app.build_demo(*load_classifier(model_dir))
    port = free_port()
    app.launch_demo(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return Client(server, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")),
                  analytics_enabled=False)


def confidences(label_output: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label_output["confidences"]}


def test_api_lists_named_endpoints(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert {"/predict", "/explain", "/batch"} <= set(api["named_endpoints"])
    threshold = api["named_endpoints"]["/predict"]["parameters"][1]
    assert threshold["parameter_default"] == pytest.approx(CARD_THRESHOLD)  # slider default from the model card


def test_about_and_disclaimer_in_page(server):
    import urllib.request

    with urllib.request.urlopen(server + "config", timeout=30) as response:
        config = response.read().decode()
    assert "NOT a diagnostic device" in config and "Test AUROC: 0.5" in config


def test_predict(client, files):
    probs, decision, timing = client.predict(handle_file(files["lesion0.jpg"]), 0.5, False, api_name="/predict")
    values = confidences(probs)
    assert set(values) == {"benign", "malignant"} and sum(values.values()) == pytest.approx(1, abs=1e-4)
    assert probs["label"] in decision and "ms" in timing
    # The label honours the threshold on p(malignant).
    assert client.predict(handle_file(files["lesion0.jpg"]), 0.0, True, api_name="/predict")[0]["label"] == "malignant"
    assert client.predict(handle_file(files["lesion0.jpg"]), 1.0, False, api_name="/predict")[0]["label"] == "benign"


@pytest.mark.parametrize("target, method", [("fused", "gradcam"), ("stage4", "gradcam++"), ("stage3", "eigencam")])
def test_explain(client, files, target, method):
    probs, decision, cam, plot, fusion_text, timing = client.predict(
        handle_file(files["lesion1.jpg"]), 0.5, target == "stage4", target, method, api_name="/explain")
    assert sum(confidences(probs).values()) == pytest.approx(1, abs=1e-4) and "Prediction" in decision
    assert Path(cam).is_file() and plot["type"] == "matplotlib" and plot["plot"].startswith("data:image")
    assert "stage3" in fusion_text and "Inference time" in timing


def test_batch_with_bad_file(client, files, tmp_path):
    names = ["lesion0.jpg", "truncated.jpg", "lesion2.jpg", "not_an_image.jpg"]
    table, csv_path = client.predict([handle_file(files[n]) for n in names], 0.5, False, api_name="/batch")
    assert table["headers"] == ["file", "p_benign", "p_malignant", "label", "error"]
    rows = {row[0]: dict(zip(table["headers"], row, strict=True)) for row in table["data"]}
    assert set(rows) == set(names)
    assert rows["lesion0.jpg"]["label"] in ("benign", "malignant") and rows["lesion0.jpg"]["error"] == ""
    assert "truncated" in rows["truncated.jpg"]["error"] and "not an image" in rows["not_an_image.jpg"]["error"]
    with open(csv_path) as f:
        assert len(list(csv.DictReader(f))) == 4


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_inputs_give_clear_errors_and_server_keeps_serving(client, files, name):
    for api_name, args in [("/predict", (0.5, False)), ("/explain", (0.5, False, "fused", "gradcam"))]:
        with pytest.raises(Exception, match=BAD_INPUTS[name]) as error:
            client.predict(handle_file(files[name]), *args, api_name=api_name)
        assert "Traceback" not in str(error.value)
    probs = client.predict(handle_file(files["lesion2.jpg"]), 0.5, False, api_name="/predict")[0]
    assert probs["label"] in ("benign", "malignant")


@pytest.mark.parametrize("name", ["rgba.png", "grey.png", "grey_alpha.png", "sixteen_bit.png", "cmyk.jpg",
                                  "exif_rotated.jpg"])
def test_unusual_images_are_converted(client, files, name):
    probs, _, cam, *_ = client.predict(handle_file(files[name]), 0.5, False, "fused", "gradcam", api_name="/explain")
    assert probs["label"] in ("benign", "malignant") and Path(cam).is_file()


def test_paths_outside_uploads_are_refused(server):
    """The image input hands its handler the uploaded path undecoded: Gradio must still refuse paths that were not
    uploaded (no reading of server files through the API)."""
    import json
    import urllib.request

    payload = {"data": [{"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}, 0.5, False]}
    request = urllib.request.Request(server + "gradio_api/call/predict", json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        event_id = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{server}gradio_api/call/predict/{event_id}", timeout=60) as response:
        stream = response.read().decode()
    assert "event: error" in stream and "confidences" not in stream


def test_file_size_limit(client, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (21 * 1024 * 1024))  # over MAX_FILE_SIZE (20 MB)
    with pytest.raises(Exception, match="(?i)size|large"):
        client.predict(handle_file(big), 0.5, False, api_name="/predict")


def test_concurrent_predicts(client, files):
    jobs = [client.submit(handle_file(files[f"lesion{i % 3}.jpg"]), 0.5, False, api_name="/predict")
            for i in range(16)]
    labels = [job.result(timeout=300)[0]["label"] for job in jobs]
    assert len(labels) == 16 and set(labels) <= {"benign", "malignant"}


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


@pytest.mark.slow
@pytest.mark.skipif(app.DEFAULT_MODEL.is_dir(), reason="the reference checkpoint exists: `python app.py` would serve")
def test_cli_without_checkpoint_exits_cleanly():
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    result = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0
    assert "train_hf.py" in result.stderr and "--model" in result.stderr and "Traceback" not in result.stderr
