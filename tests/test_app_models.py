"""The app's model dropdown (issue 12, item 4): every model directory under the models folder (a subfolder with a
config.json) plus the `--model` one, which is the default; switching loads the model once (then cached) and re-runs the
analysis with it, so that the decision, the threshold (both sliders reset to its own) and the Grad-CAM all come from
the selected model, an ASFF model on a timm backbone included. Handlers are driven directly (no server), except one
slow test through gradio_client."""

import csv
import json
import shutil
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from app_fixtures import free_port, save_tiny_model
from helpers import lesion_image

import app
import modeling.inference as inference
from modeling import AsffResNetConfig, AsffResNetForImageClassification, presentation
from modeling.image_processing import build_image_processor
from modeling.inference import load_classifier, predict

TIMM_THRESHOLD = 0.3


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """asff-tiny (ResNet, threshold 0.5 by default), lite0-tiny (a timm backbone, threshold 0.3) and a folder that is
    not a model."""
    root = tmp_path_factory.mktemp("models")
    save_tiny_model(root / "asff-tiny", "channel")
    torch.manual_seed(1)
    config = AsffResNetConfig(backbone="test_efficientnet", fusion_hidden_size=16, head_hidden_size=16, image_size=64,
                              decision_threshold=TIMM_THRESHOLD)
    AsffResNetForImageClassification(config).save_pretrained(root / "lite0-tiny")
    build_image_processor(64).save_pretrained(root / "lite0-tiny")
    (root / "not-a-model").mkdir()
    (root / "not-a-model" / "notes.txt").write_text("no config.json here")
    return root


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("dropdown_images") / "lesion.jpg"
    lesion_image(1, np.random.default_rng(5), 72).save(path)
    return str(path)


@pytest.fixture
def demo(models_dir):
    default = models_dir / "asff-tiny"
    return app.build_demo(*load_classifier(default), models=app.model_choices(models_dir, default))


def handler(demo, name: str):
    return next(f.fn for f in demo.fns.values() if f.name == name)


def backbone_of(model) -> str:
    return type(model.asff_resnet.backbone).__name__


def dropdown(demo) -> dict:
    return next(c["props"] for c in demo.get_config_file()["components"] if c["props"].get("elem_id") == "model")


def test_the_cam_choices_named_in_the_app_are_modeling_explains():
    """The app offers the CAM targets and methods from the torch-free `modeling.presentation` (modeling.explain is
    imported after start-up): each method it offers is one explain runs, and each has a name on screen."""
    from modeling.explain import CAM_METHODS, CAM_TARGETS

    assert app.CAM_TARGETS == CAM_TARGETS and list(app.CAM_METHODS) == list(CAM_METHODS)
    assert set(presentation.CAM_METHOD_NAMES) == set(CAM_METHODS)


def test_model_choices_lists_model_directories_and_the_default(models_dir, tmp_path):
    assert app.model_choices(models_dir, models_dir / "asff-tiny") == {
        "asff-tiny": str(models_dir / "asff-tiny"), "lite0-tiny": str(models_dir / "lite0-tiny")}
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(models_dir / "asff-tiny", elsewhere)
    assert set(app.model_choices(models_dir, elsewhere)) == {"asff-tiny", "lite0-tiny", "elsewhere"}
    assert app.model_choices(None, "someone/hub-model") == {"someone/hub-model": "someone/hub-model"}
    assert set(app.model_choices(tmp_path / "absent", elsewhere)) == {"elsewhere"}


def test_the_dropdown_lists_the_models_with_the_default_selected(demo, models_dir):
    props = dropdown(demo)
    assert props["visible"] is True and props["value"] == "asff-tiny"
    assert [choice[0] for choice in props["choices"]] == ["asff-tiny", "lite0-tiny"]
    single = app.build_demo(*load_classifier(models_dir / "asff-tiny"))
    assert dropdown(single)["visible"] is False  # one model: nothing to choose


def test_switching_reanalyses_with_the_selected_model(demo, models_dir, image_path, monkeypatch):
    calls = []
    real_explain = app.explain
    monkeypatch.setattr(app, "explain", lambda *a, **k: calls.append((a[0], k)) or real_explain(*a, **k))
    on_model, on_threshold = handler(demo, "on_model"), handler(demo, "on_threshold")

    threshold, batch_threshold, about, card, table, csv_file, summary, made, probs, decision, result, cam, caption, \
        *_, session = on_model("lite0-tiny", image_path, False, "fused", "gradcam")
    assert table["value"]["data"] == [] and csv_file is None and summary == ""  # no batch rows of the other model
    assert made is None  # nor their settings
    timm_model, timm_processor, _ = load_classifier(models_dir / "lite0-tiny")
    expected = predict(timm_model, timm_processor, image_path, threshold=TIMM_THRESHOLD)
    assert threshold["value"] == batch_threshold["value"] == pytest.approx(TIMM_THRESHOLD)  # sliders reset
    assert "`lite0-tiny`" in about and result["model"] == session["model"] == "lite0-tiny"
    assert result["threshold"] == pytest.approx(TIMM_THRESHOLD) and f"threshold {TIMM_THRESHOLD:.3f}" in decision
    # The reset buttons go back to the selected model's threshold, not the one the page loaded with.
    assert handler(demo, "model_threshold")("lite0-tiny") == pytest.approx(TIMM_THRESHOLD)
    assert handler(demo, "model_threshold")("asff-tiny") == pytest.approx(0.5)
    assert result["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)
    assert result["label"] == expected.label == result["cam_label"] == probs[0]
    assert isinstance(cam, np.ndarray) and f"Grad-CAM of *{expected.label}*" in caption
    assert backbone_of(calls[-1][0]) == "TimmBackbone"  # the CAM came from the selected model

    # The threshold moves: the decision flips from the cached result, the CAM is recomputed with the same model.
    flipped = 1.0 if expected.label == "malignant" else 0.0
    *_, moved = on_threshold(session, flipped)
    assert moved["prediction"].label != expected.label and moved["model"] == "lite0-tiny"
    assert backbone_of(calls[-1][0]) == "TimmBackbone"

    # Back to the default: its own threshold and decision rule.
    threshold, *_, result, _, _, _, _, _, back = on_model("asff-tiny", image_path, False, "fused", "gradcam")
    assert threshold["value"] == pytest.approx(0.5) and result["model"] == back["model"] == "asff-tiny"
    assert backbone_of(calls[-1][0]) == "ResNetBackbone"


def test_each_model_loads_once(demo, image_path, monkeypatch):
    loads = []
    real = inference.load_classifier  # what the registry calls (imported on first use: app.py starts without torch)
    monkeypatch.setattr(inference, "load_classifier", lambda source: loads.append(source) or real(source))
    on_model = handler(demo, "on_model")
    for _ in range(2):
        on_model("lite0-tiny", None, False, "fused", "gradcam")  # no image: results cleared
    on_model("asff-tiny", None, False, "fused", "gradcam")  # the default is loaded already
    assert [Path(s).name for s in loads] == ["lite0-tiny"]


def test_predict_and_batch_use_the_selected_model(demo, image_path, tmp_path):
    _, _, result = handler(demo, "run_predict")(image_path, 0.4, False, "lite0-tiny")
    assert result["model"] == "lite0-tiny" and result["backend"] == "torch" and result["threshold"] == 0.4
    _, _, default = handler(demo, "run_predict")(image_path, 0.4, False)  # no model given: the default
    assert default["model"] == "asff-tiny"
    table, csv_path, summary, made = handler(demo, "run_batch")([image_path], 0.4, False, "lite0-tiny",
                                                               progress=lambda *a, **k: None)
    with open(csv_path) as f:
        row = next(csv.DictReader(f))
    assert row["model"] == "lite0-tiny" and row["backend"] == "torch" and "`lite0-tiny`" in summary
    # Moving the batch threshold or TTA marks the table out of date (its decisions are 0.4's); back to 0.4, it is not.
    on_settings = handler(demo, "on_batch_settings")
    assert on_settings(made, 0.4, False) == (summary, gr.skip())
    for moved, slider in (on_settings(made, 0.7, False), on_settings(made, 0.4, True)):
        assert moved.startswith(app.BATCH_STALE) and moved.endswith(summary) and slider == gr.skip()
    assert on_settings(None, 0.7, False) == (gr.update(), gr.skip())  # no table: nothing to mark
    # Typed out of range: back at the table's threshold (else the model's), with a warning; the summary stays.
    with pytest.warns(UserWarning, match="between 0 and 1; 1.5 was typed"):
        kept, reset = on_settings(made, 1.5, False)
    assert kept == gr.update() and reset["threshold"] == 0.4
    with pytest.warns(UserWarning, match="decision threshold"):
        _, reset = on_settings(None, -1, False, "lite0-tiny")
    assert reset["threshold"] == handler(demo, "model_threshold")("lite0-tiny")


def test_an_unknown_or_broken_model_is_a_clear_error(demo, models_dir, tmp_path, image_path):
    with pytest.raises(gr.Error, match="Unknown model"):
        handler(demo, "run_predict")(image_path, 0.5, False, "no-such-model")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "asff_resnet"}))  # no weights
    demo = app.build_demo(*load_classifier(models_dir / "asff-tiny"), models={"broken": str(broken)})
    with pytest.raises(gr.Error, match="Could not load the model broken"):
        handler(demo, "on_model")("broken", image_path, False, "fused", "gradcam")
    assert handler(demo, "run_predict")(image_path, 0.5, False)[2]["model"] == "asff-tiny"  # still serving


@pytest.mark.slow
def test_the_api_takes_the_model_by_name(models_dir, image_path):
    """/predict's last parameter is the model's name; left out, the default model answers."""
    from gradio_client import Client, handle_file

    default = models_dir / "asff-tiny"
    demo = app.build_demo(*load_classifier(default), models=app.model_choices(models_dir, default))
    port = free_port()
    app.launch_demo(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False)
        result = client.predict(handle_file(image_path), 0.5, False, "lite0-tiny", api_name="/predict")[2]
        assert result["model"] == "lite0-tiny"
        assert client.predict(handle_file(image_path), 0.5, False, api_name="/predict")[2]["model"] == "asff-tiny"
    finally:
        demo.close()


@pytest.mark.slow
def test_the_app_opens_on_the_recommended_model_with_the_reference_one_in_the_dropdown():
    """`python app.py` serves asff-lite2-isic (the best on validation across both sources, README "Shipped models");
    the Lite0 model and the paper's ASFF-ResNet-50 are one dropdown choice away. Its float32 graph predicts and serves
    Grad-CAM."""
    assert app.DEFAULT_MODEL == app.MODELS_DIR / "asff-lite2-isic" and app.DEFAULT_MODEL.is_dir()
    choices = app.model_choices(app.MODELS_DIR, app.DEFAULT_MODEL)
    assert {"asff-lite2-isic", "asff-lite0-isic", "asff-resnet50-isic2020"} <= set(choices)
    model, processor, info = app.load_or_exit(app.DEFAULT_MODEL)
    served = app.served_model(model, processor, info, app.backend_or_exit(app.DEFAULT_MODEL, model, processor))
    assert served.backend is not None and served.cam_backend is served.backend
    assert "Grad-CAM: PyTorch above the backbone's stage maps" in served.about()


def test_a_model_switch_keeps_the_sliders_range_check(demo, image_path):
    """A model switch relabels both sliders with a gr.update, for which Gradio rebuilds each for the session from its
    class: the rebuilt sliders still answer an out-of-range threshold with the app's message (not Gradio's "Value 1.5
    is greater than maximum value 1.0." and a server traceback), and the image and the label rebuilt the same way keep
    their own behaviour. Driven through Gradio's own postprocessing with a session state."""
    import asyncio

    from gradio.state_holder import SessionState

    block_fn = next(f for f in demo.fns.values() if f.name == "on_model")
    state = SessionState(demo)
    predictions = block_fn.fn("lite0-tiny", image_path, False, "fused", "gradcam")
    asyncio.run(demo.postprocess_data(block_fn, list(predictions), state))
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    for elem_id in ("threshold", "batch-threshold"):
        original = by_id[elem_id]
        rebuilt = state[original._id]
        assert rebuilt is not original  # rebuilt for the session
        with pytest.raises(gr.Error, match="between 0 and 1; 1.5 was typed"):
            rebuilt.preprocess(1.5)
        assert rebuilt.preprocess(0.25) == 0.25
        assert rebuilt.get_block_name() == "slider"  # the browser and the API see a plain slider
    for elem_id, kind in (("lesion-image", app.RawUploadImage), ("probabilities", app.DecisionLabel)):
        rebuilt = type(by_id[elem_id])(**{**by_id[elem_id].constructor_args, "render": False})  # as Gradio does
        assert isinstance(rebuilt, kind)
    label = app.DecisionLabel(render=False).postprocess(("malignant", {"benign": 0.7, "malignant": 0.3}))
    assert label.label == "malignant"  # the decision, not the most probable class
    assert [c.label for c in label.confidences] == ["malignant", "benign"]  # its bar first
