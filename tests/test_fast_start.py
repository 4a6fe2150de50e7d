"""The app's start without torch (issue 13, item 4): the processor's numpy twin gives the processor's pixels bit for
bit; a model served from its files and ONNX graph gives the same predictions and info as the loaded one; `import app`
imports neither torch nor transformers; the torch side loads behind the page and an analysis waits for it."""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from app_fixtures import exported_tiny_model, free_port, wait_for_http
from helpers import ROOT, lesion_image, make_image_folder, offline_env
from PIL import Image
from transformers import AutoImageProcessor

from modeling.image_processing import build_image_processor
from modeling.image_processing_numpy import NumpyImageProcessor, resize
from modeling.inference import load_classifier, predict
from modeling.onnx_runtime import load_backend
from modeling.prediction import count_parameters, read_model_info

CHECKPOINTS = sorted(p for p in (ROOT / "checkpoints").iterdir() if (p / "config.json").is_file())


def textured(rng, height: int, width: int) -> np.ndarray:
    """Smooth structure plus noise: every resampling weight matters, and values near the ends get clipped."""
    base = rng.integers(0, 256, (height // 5 + 2, width // 5 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(base).resize((width, height), Image.BILINEAR), dtype=np.int64)
    return np.clip(smooth + rng.integers(-40, 40, smooth.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [224, 32, 97])
@pytest.mark.parametrize("colour_constancy, resize_mode, resample",
                         [(False, "crop", 3), (True, "crop", 3), (True, "squash", 3), (False, "squash", 2),
                          (True, "crop", 2)])
def test_the_numpy_processor_gives_the_processors_pixels_bit_for_bit(size, colour_constancy, resize_mode, resample):
    processor = build_image_processor(size, color_constancy=colour_constancy, resize_mode=resize_mode,
                                      resample=resample)
    twin = NumpyImageProcessor(size, tuple(processor.image_mean), tuple(processor.image_std), resample, resize_mode,
                               6.0 if colour_constancy else None)
    rng = np.random.default_rng(size + resample)
    # down and up, wide and tall, odd sizes, one side already at the size, a square at the size
    for height, width in [(450, 600), (601, 449), (size, size), (size, 3 * size + 1), (23, 41), (768, 1024)]:
        image = Image.fromarray(textured(rng, height, width))
        expected = processor(images=image, return_tensors="pt")["pixel_values"].numpy()
        assert np.array_equal(twin(image), expected), (height, width)


def test_the_resize_is_torchvisions_not_pillows():
    """Pillow's bicubic (int32 weights) differs from torchvision's uint8 path (int16 weights) by one grey level here
    and there; the twin must follow torchvision."""
    import torch
    from torchvision.transforms.v2 import functional as tvF

    image = textured(np.random.default_rng(0), 384, 512)
    expected = tvF.resize(torch.from_numpy(image).permute(2, 0, 1), [224, 298],
                          interpolation=tvF.InterpolationMode.BICUBIC, antialias=True).permute(1, 2, 0).numpy()
    pillow = np.asarray(Image.fromarray(image).resize((298, 224), Image.BICUBIC))
    assert not np.array_equal(pillow, expected)  # the difference the twin exists for
    assert np.array_equal(resize(image, 224, 298), expected)


def test_other_image_modes_are_converted_like_the_processor(tmp_path):
    processor = build_image_processor(32, color_constancy=True)
    processor.save_pretrained(tmp_path)
    twin = NumpyImageProcessor.from_pretrained(tmp_path)
    rgb = Image.fromarray(textured(np.random.default_rng(1), 50, 70))
    for image in (rgb.convert("L"), rgb.convert("RGBA"), rgb.convert("P")):
        assert np.array_equal(twin(image), processor(images=image, return_tensors="pt")["pixel_values"].numpy())


@pytest.mark.parametrize("checkpoint", CHECKPOINTS, ids=lambda p: p.name)
def test_the_shipped_processors_have_a_twin(checkpoint):
    """Ours (with colour constancy) and the `ConvNextImageProcessor` of the reference checkpoint."""
    processor, twin = AutoImageProcessor.from_pretrained(checkpoint), NumpyImageProcessor.from_pretrained(checkpoint)
    assert twin is not None
    image = Image.fromarray(textured(np.random.default_rng(2), 300, 410))
    assert np.array_equal(twin(image), processor(images=image, return_tensors="pt")["pixel_values"].numpy())


def test_processors_without_a_twin_are_left_to_torch(tmp_path):
    build_image_processor(32).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert NumpyImageProcessor.from_pretrained(tmp_path) is not None
    for change in ({"image_processor_type": "ViTImageProcessor"}, {"do_center_crop": True},
                   {"size": {"height": 32, "width": 40}}, {"resample": 1}):
        (tmp_path / "preprocessor_config.json").write_text(json.dumps({**config, **change}))
        assert NumpyImageProcessor.from_pretrained(tmp_path) is None, change
    assert NumpyImageProcessor.from_pretrained(tmp_path / "nowhere") is None


# --------------------------------------------------------------------------- a model served from its files


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The calibrated tiny channel model (OOD score, fitted threshold) with its float32 and int8 graphs and a card."""
    return exported_tiny_model(tmp_path_factory, "fast_start")


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> list[Path]:
    folder = make_image_folder(tmp_path_factory.mktemp("fast_start_images"), {"test": 4})
    return sorted((folder / "test").rglob("*.jpg"))


@pytest.mark.parametrize("backend", ["onnx-int8", "onnx"])
def test_a_model_started_without_torch_predicts_exactly_as_the_loaded_one(exported, sample, backend):
    import app

    light = app.start_without_torch(exported, backend)
    model, processor, info = load_classifier(exported)
    full = app.served_model(model, processor, info, load_backend(exported, model, processor, backend))
    assert not light.loaded and full.loaded and light.backend.name == full.backend.name == backend
    assert light.info == full.info  # what the page shows: name, labels, thresholds, parameter count, card
    assert light.about() == full.about()  # which graph predicts and which serves Grad-CAM
    for path in sample:
        for tta in (False, True):
            expected = predict(model, processor, path, tta=tta, threshold=0.4, backend=full.backend)
            assert light.predict(Image.open(path), tta, 0.4) == expected  # every field, exactly
            assert full.predict(Image.open(path), tta, 0.4) == expected


def test_no_light_start_where_it_cannot_give_the_same_answers(exported, tiny_model_dir, tmp_path):
    import app

    assert app.start_without_torch(exported, "torch") is None
    assert app.start_without_torch(tiny_model_dir) is None  # no ONNX graph
    assert app.start_without_torch("someone/some-model") is None  # a Hub id
    other = tmp_path / "other-processor"
    shutil.copytree(exported, other)
    config = json.loads((other / "preprocessor_config.json").read_text())
    (other / "preprocessor_config.json").write_text(json.dumps({**config, "do_center_crop": True}))
    assert app.start_without_torch(other) is None


@pytest.mark.parametrize("checkpoint", CHECKPOINTS, ids=lambda p: p.name)
def test_the_info_read_from_files_is_the_loaded_models(checkpoint):
    _, _, info = load_classifier(checkpoint)
    assert count_parameters(checkpoint) == info.num_parameters
    assert read_model_info(checkpoint, has_ood_score=info.ood_threshold is not None) == info


def test_the_registry_loads_the_torch_side_once_and_predictions_do_not_wait(exported, sample, monkeypatch):
    import app

    registry = app.ModelRegistry(app.start_without_torch(exported), None)
    demo = app.build_demo_for(registry)
    fns = {f.name: f.fn for f in demo.fns.values()}
    loads, notes = [], []
    real_load = app.ModelRegistry._load
    monkeypatch.setattr(app.ModelRegistry, "_load", lambda self, name: loads.append(name) or real_load(self, name))
    monkeypatch.setattr(app.gr, "Info", notes.append)
    _, _, result = fns["run_predict"](str(sample[0]), 0.5, False)
    assert loads == [] and result["backend"] == "onnx-int8"  # predicted from the graph, nothing loaded
    assert not registry.peek(None).loaded
    _, _, analysed, cam, *_ = fns["analyse"](str(sample[0]), 0.5, False, "fused", "gradcam")  # needs torch: loads
    assert loads == ["tiny-onnx"] and registry.peek(None).loaded and cam is not None
    assert notes == [app.LOADING_MODEL]  # the wait is said on screen
    assert analysed["probabilities"] == result["probabilities"]
    fns["analyse"](str(sample[1]), 0.5, False, "fused", "gradcam")
    app.warm_up(registry)
    assert loads == ["tiny-onnx"] and len(notes) == 1  # loaded once, said once


def test_importing_the_app_imports_neither_torch_nor_transformers(exported):
    code = (
        "import sys, app\n"
        "heavy = [m for m in ('torch', 'torchvision', 'transformers') if m in sys.modules]\n"
        f"served = app.start_without_torch({str(exported)!r})\n"
        "heavy += [m for m in ('torch', 'torchvision', 'transformers') if m in sys.modules]\n"
        "import modeling, modeling.onnx_runtime\n"  # the package, imported afterwards, binds the same modules
        "assert modeling.onnx_runtime is sys.modules['modeling.onnx_runtime']\n"
        "assert isinstance(served.backend, modeling.onnx_runtime.OnnxClassifier)\n"
        "print(heavy, served.backend.name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=offline_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[-2] == "[] onnx-int8"


@pytest.mark.slow
def test_python_app_answers_predictions_before_the_torch_side_and_analyses_after(exported, sample, tmp_path):
    """`python app.py` as a user runs it: /predict answers with the graph's prediction, and /explain (Grad-CAM, after
    the torch side has loaded in the background) gives the same probabilities."""
    from gradio_client import Client, handle_file

    port = free_port()
    log = (tmp_path / "app.log").open("w")
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", str(exported), "--port", str(port)],
                               cwd=ROOT, env=offline_env(GRADIO_ANALYTICS_ENABLED="False"), stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", process=process)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        _, _, predicted = client.predict(handle_file(sample[0]), 0.5, False, api_name="/predict")
        model, processor, _ = load_classifier(exported)
        expected = predict(model, processor, sample[0], threshold=0.5,
                           backend=load_backend(exported, model, processor))
        assert predicted["probabilities"] == expected.probabilities and predicted["backend"] == "onnx-int8"
        outputs = client.predict(handle_file(sample[0]), 0.5, False, "fused", "gradcam", api_name="/explain")
        assert outputs[2]["probabilities"] == expected.probabilities and outputs[3] is not None
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    assert "Traceback" not in (tmp_path / "app.log").read_text()


def test_info_equality_is_not_vacuous(exported):
    """`read_model_info` reads the files: a changed threshold shows."""
    info = read_model_info(exported, has_ood_score=True)
    config = json.loads((exported / "config.json").read_text())
    assert info.decision_threshold == pytest.approx(config["decision_threshold"])
    assert dataclasses.replace(info, decision_threshold=0.123) != info


def test_a_lesion_image_goes_through_both(exported):
    """A generated lesion at a photograph's aspect, through the light and the loaded model."""
    import app

    image = lesion_image(1, np.random.default_rng(5), 120).resize((173, 120))
    light = app.start_without_torch(exported, "onnx")
    model, processor, _ = load_classifier(exported)
    assert light.predict(image, False, 0.5) == predict(model, processor, image, threshold=0.5, backend=light.backend)


def test_the_numpy_processor_is_one_self_contained_file(tmp_path, monkeypatch):
    """The README tells users of the ONNX files to copy it: it must work outside this repository."""
    import importlib.util

    copy = tmp_path / "anywhere" / "numpy_processor.py"
    copy.parent.mkdir()
    shutil.copy(ROOT / "modeling" / "image_processing_numpy.py", copy)
    spec = importlib.util.spec_from_file_location("numpy_processor", copy)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # as `import numpy_processor` would
    spec.loader.exec_module(module)
    build_image_processor(32, color_constancy=True).save_pretrained(tmp_path)
    image = Image.fromarray(textured(np.random.default_rng(3), 40, 55))
    assert np.array_equal(module.NumpyImageProcessor.from_pretrained(tmp_path)(image),
                          NumpyImageProcessor.from_pretrained(tmp_path)(image))


def test_graphs_of_another_model_are_skipped_with_one_warning_each(exported, tmp_path, caplog):
    """The app looks for a graph before torch is loaded, then again with the model: each mismatch is logged once."""
    import logging

    import app

    other = tmp_path / "other"
    shutil.copytree(exported, other)
    config = json.loads((other / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "nevus", "1": "melanoma"}, {"nevus": 0, "melanoma": 1}
    (other / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="modeling.onnx_runtime"):
        assert app.start_without_torch(other) is None
        model, processor, _ = load_classifier(other)
        assert load_backend(other, model, processor) is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "modeling.onnx_runtime" and r.levelno >= 30]
    assert len(warnings) == 2 and len(set(warnings)) == 2  # the int8 and the float32 graph, once each
