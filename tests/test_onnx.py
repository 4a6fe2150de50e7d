"""ONNX export and onnxruntime inference (issue 13), on tiny models: the Hub layout (onnx/model.onnx, float32, and
onnx/model_quantized.onnx, int8) with a dynamic batch axis, the processor's input size and the opset recorded; the
same probabilities (float32) and decisions as PyTorch through `predict` / `predict_batch` / the batch CLI; the backend
chosen (fastest available, torch with a log line when there is none); files that do not match the model refused;
the float32 graph made on first use into the cache; a timm backbone. The reference checkpoint's committed int8 file
is checked in the slow tests (real images)."""

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from app_fixtures import exported_tiny_model
from helpers import lesion_image, make_image_folder

from modeling import AsffResNetConfig, AsffResNetForImageClassification
from modeling.image_processing import build_image_processor
from modeling.inference import load_classifier, predict, predict_batch
from modeling.onnx_export import (
    OPSET,
    ExportVerificationError,
    export_onnx,
    float_nodes,
    int8_failure,
    ood_only_nodes,
    write_card_section,
)
from modeling.onnx_runtime import (
    OnnxMismatchError,
    OnnxUnavailableError,
    cached_path,
    load_backend,
    weights_fingerprint,
)
from modeling.predict import main as predict_cli

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "checkpoints" / "asff-resnet50-isic2020"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The calibrated tiny channel model (OOD score, fitted threshold) with its float32 and int8 graphs and a card."""
    return exported_tiny_model(tmp_path_factory, "onnx_model")


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> list[Path]:
    folder = make_image_folder(tmp_path_factory.mktemp("onnx_images"), {"test": 6})
    return sorted((folder / "test").rglob("*.jpg"))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Float32 graphs made on first use go to a per-test cache, never the user's."""
    monkeypatch.setenv("ASFF_ONNX_CACHE", str(tmp_path / "onnx-cache"))


def test_export_writes_the_hub_layout_with_its_metadata_and_report(exported):
    model, processor, _ = load_classifier(exported)
    for name, precision in [("model.onnx", "float32"), ("model_quantized.onnx", "int8")]:
        graph = onnx.load(str(exported / "onnx" / name), load_external_data=False)
        meta = {p.key: p.value for p in graph.metadata_props}
        dims = graph.graph.input[0].type.tensor_type.shape.dim
        assert graph.graph.input[0].name == "pixel_values"
        assert dims[0].dim_param and not dims[0].dim_value  # a dynamic batch axis
        assert [d.dim_value for d in dims[1:]] == [3, 32, 32]  # the processor's input size
        # the backbone's stage maps last: Grad-CAM runs torch above them (`modeling.explain`)
        assert [o.name for o in graph.graph.output] == ["logits", "ood_score", "fusion_weights", "stage_low",
                                                        "stage_high"]
        assert meta["asff.precision"] == precision and meta["asff.opset"] == str(OPSET)
        assert json.loads(meta["asff.id2label"]) == {"0": "benign", "1": "malignant"}
        assert meta["asff.image_size"] == "32" and meta["asff.weights_sha256"] == weights_fingerprint(exported)
        assert any(o.domain in ("", "ai.onnx") and o.version == OPSET for o in graph.opset_import)
    report = json.loads((exported / "onnx" / "export_report.json").read_text())
    assert report["verified"] is True and report["opset"] == OPSET and report["image_size"] == 32
    assert report["fp32"]["vs_torch"]["max_abs_diff_probability"] <= 1e-4
    assert report["fp32"]["vs_torch"]["images"] == 32 and report["int8"]["quantization"] == "static"
    card = (exported / "README.md").read_text()
    assert card.startswith("# tiny-onnx") and card.count("## ONNX") == 1 and "model_quantized.onnx" in card


def test_the_card_section_is_replaced_not_repeated(tmp_path):
    card = tmp_path / "README.md"
    card.write_text("# m\n\ntext\n")
    write_card_section(card, "first")
    write_card_section(card, "second")
    text = card.read_text()
    assert text.count("## ONNX") == 1 and "second" in text and "first" not in text and text.startswith("# m\n\ntext")


def test_float32_gives_torchs_probabilities_and_decisions(exported, sample):
    model, processor, info = load_classifier(exported)
    backend = load_backend(exported, model, processor, "onnx")
    assert backend.backend == "onnx" and backend.path == exported / "onnx" / "model.onnx"
    threshold = float(np.median([predict(model, processor, p).probabilities["malignant"] for p in sample]))
    torch_rows = predict_batch(model, processor, sample, threshold=threshold, batch_size=5)
    onnx_rows = predict_batch(model, processor, sample, threshold=threshold, batch_size=5, backend=backend)
    assert {r["backend"] for r in torch_rows} == {"torch"} and {r["backend"] for r in onnx_rows} == {"onnx"}
    assert {r["label"] for r in torch_rows} == {"benign", "malignant"}  # the threshold splits the sample
    for ours, theirs in zip(onnx_rows, torch_rows, strict=True):
        assert ours["label"] == theirs["label"] and ours["in_distribution"] == theirs["in_distribution"]
        assert ours["p_malignant"] == pytest.approx(theirs["p_malignant"], abs=1e-4)
        assert ours["ood_score"] == pytest.approx(theirs["ood_score"], rel=1e-3, abs=1e-3)
    with_tta = predict(model, processor, sample[0], tta=True, backend=backend)
    reference = predict(model, processor, sample[0], tta=True)
    assert with_tta.views == 8 and with_tta.spread == pytest.approx(reference.spread, abs=1e-4)
    assert with_tta.probabilities == pytest.approx(reference.probabilities, abs=1e-4)


def test_int8_decides_like_torch_on_a_sample(exported, sample):
    """The tiny model's probabilities span a few hundredths, so images at the threshold may flip under int8 rounding:
    the int8 graph must rank the images as torch does, and take torch's decision on every image clear of the
    threshold (the median, so that the sample splits). The reference checkpoint's whole test split is checked at
    export (onnx/export_report.json) and in the slow tests."""
    from scipy.stats import spearmanr

    model, processor, info = load_classifier(exported)
    backend = load_backend(exported, model, processor)  # auto: the fastest, int8
    assert backend.backend == "onnx-int8"
    p_torch = np.array([predict(model, processor, p).probabilities["malignant"] for p in sample])
    threshold = float(np.median(p_torch))
    ours = [predict(model, processor, p, backend=backend, threshold=threshold) for p in sample]
    theirs = [predict(model, processor, p, threshold=threshold) for p in sample]
    p_int8 = np.array([o.probabilities["malignant"] for o in ours])
    assert spearmanr(p_torch, p_int8).statistic >= 0.8
    clear = np.abs(p_torch - threshold) >= np.quantile(np.abs(p_torch - threshold), 0.5)
    assert clear.sum() >= len(sample) // 2
    assert [o.label for o, c in zip(ours, clear, strict=True) if c] == [
        t.label for t, c in zip(theirs, clear, strict=True) if c]
    # The OOD flag is checked on real images at export (INT8_OOD_AGREEMENT): a tiny model's features are too
    # coarse for int8 to keep its Mahalanobis scores; here only that the graph reports them.
    assert all(o.ood_score is not None and o.ood_threshold == t.ood_threshold for o, t in zip(ours, theirs,
                                                                                              strict=True))


def test_backend_choice_and_fallback(exported, tiny_model_dir, caplog):
    model, processor, _ = load_classifier(tiny_model_dir)
    assert load_backend(tiny_model_dir, model, processor, "torch") is None
    with caplog.at_level(logging.INFO, logger="modeling.onnx_runtime"):
        assert load_backend(tiny_model_dir, model, processor) is None  # no ONNX files: torch
    lines = [r.getMessage() for r in caplog.records if r.name == "modeling.onnx_runtime"]
    assert len(lines) == 1 and "predicting with torch" in lines[0] and "modeling.export --onnx" in lines[0]
    with pytest.raises(OnnxUnavailableError, match="model_quantized.onnx"):
        load_backend(tiny_model_dir, model, processor, "onnx-int8")
    with pytest.raises(OnnxUnavailableError, match="local model directory"):
        load_backend("someone/some-model", model, processor, "onnx-int8")
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend(tiny_model_dir, model, processor, "tensorrt")


@pytest.mark.parametrize("change, message", [
    ("labels", "labels"), ("input size", "input size"), ("weights", "other weights")])
def test_an_onnx_file_of_another_model_is_refused(exported, tmp_path, caplog, change, message):
    other = tmp_path / "other"
    shutil.copytree(exported, other)
    if change == "labels":
        config = json.loads((other / "config.json").read_text())
        config["id2label"], config["label2id"] = {"0": "nevus", "1": "melanoma"}, {"nevus": 0, "melanoma": 1}
        (other / "config.json").write_text(json.dumps(config))
    elif change == "input size":
        build_image_processor(48).save_pretrained(other)
    else:
        model = AsffResNetForImageClassification.from_pretrained(other)
        with torch.no_grad():
            model.classifier[-1].bias += 1.0
        model.save_pretrained(other)
    model, processor, _ = load_classifier(other)
    with pytest.raises(OnnxMismatchError, match=message) as error:
        load_backend(other, model, processor, "onnx-int8")
    assert "modeling.export --onnx" in str(error.value)
    with caplog.at_level(logging.INFO, logger="modeling.onnx_runtime"):
        assert load_backend(other, model, processor) is None  # auto: skipped with a warning, torch serves
    assert any(r.levelno == logging.WARNING and message in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_float32_is_made_on_first_use_into_the_cache(exported, tmp_path, sample):
    shipped = tmp_path / "shipped"
    shutil.copytree(exported, shipped)
    (shipped / "onnx" / "model.onnx").unlink()  # what a checkpoint commits: int8 only
    model, processor, _ = load_classifier(shipped)
    assert cached_path(shipped) is not None and not cached_path(shipped).exists()
    backend = load_backend(shipped, model, processor, "onnx")
    assert backend.path == cached_path(shipped) and backend.path.is_file()
    assert str(tmp_path / "onnx-cache") in str(backend.path)
    stamp = backend.path.stat().st_mtime_ns
    assert load_backend(shipped, model, processor, "onnx").path.stat().st_mtime_ns == stamp  # made once
    p = predict(model, processor, sample[0], backend=backend).probabilities
    assert p == pytest.approx(predict(model, processor, sample[0]).probabilities, abs=1e-4)


def test_quantisation_keeps_the_fusion_and_the_ood_scorer_in_float(exported):
    graph = onnx.load(str(exported / "onnx" / "model.onnx"), load_external_data=False)
    kept, ood = set(float_nodes(graph)), set(ood_only_nodes(graph))
    assert ood and ood <= kept
    ops = {n.name: n.op_type for n in graph.graph.node}
    assert {"Einsum", "Sqrt"} <= {ops[n] for n in ood}  # the Mahalanobis distance
    weights_of = {n.name: [i for i in n.input if "." in i] for n in graph.graph.node}
    assert any("asff_resnet.fusion." in w for n in kept for w in weights_of[n])
    assert not any("backbone" in w for n in kept for w in weights_of[n])  # the backbone is quantised
    quantized = onnx.load(str(exported / "onnx" / "model_quantized.onnx"), load_external_data=False)
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)


def test_int8_check_against_float32():
    fp32 = {"accuracy": 0.84, "roc_auc": 0.936}
    assert int8_failure(fp32, {"accuracy": 0.845, "roc_auc": 0.939}) is None
    assert "ROC AUC" in int8_failure(fp32, {"accuracy": 0.84, "roc_auc": 0.93})
    assert "accuracy" in int8_failure(fp32, {"accuracy": 0.82, "roc_auc": 0.936})
    assert int8_failure(None, None) is None  # no labelled images: nothing to gate on
    assert "OOD flag" in int8_failure(fp32, {"accuracy": 0.84, "roc_auc": 0.936}, ood_flag_agreement=0.9)
    assert int8_failure(fp32, {"accuracy": 0.84, "roc_auc": 0.936}, ood_flag_agreement=0.995) is None


@pytest.mark.slow
def test_a_failed_int8_check_fails_the_export(exported, tmp_path, monkeypatch):
    import modeling.onnx_export as onnx_export

    folder = make_image_folder(tmp_path / "images", {"train": 4, "test": 4})
    model_dir = tmp_path / "model"
    shutil.copytree(exported, model_dir)
    monkeypatch.setattr(onnx_export, "INT8_ROC_AUC_TOLERANCE", -1.0)  # no int8 graph can pass
    monkeypatch.setattr(onnx_export, "INT8_OOD_AGREEMENT", 0.0)  # (the tiny model's int8 OOD scores would fail first)
    with pytest.raises(ExportVerificationError, match="int8 ROC AUC"):
        export_onnx(model_dir, folder, calibration_count=4, verify_count=4)
    report = json.loads((model_dir / "onnx" / "export_report.json").read_text())
    assert report["verified"] is False and "int8" in report["failure"] and report["fp32"]["metrics"]["images"] == 8
    assert not (model_dir / "onnx" / "model_quantized.onnx").exists()


def test_batch_cli_backend_flag(exported, tmp_path):
    folder = make_image_folder(tmp_path / "images", {"test": 2})
    rows = {}
    for backend in ("torch", "onnx", "onnx-int8", "auto"):
        out = tmp_path / f"{backend}.csv"
        assert predict_cli([str(folder), "--model", str(exported), "--out", str(out), "--backend", backend]) == 0
        with out.open() as f:
            rows[backend] = list(csv.DictReader(f))
    assert list(rows["torch"][0])[-4:] == ["model", "threshold", "tta", "backend"]
    assert [r["backend"] for r in rows["auto"]] == ["onnx-int8"] * 4  # default: the fastest the directory has
    assert {r["backend"] for r in rows["onnx"]} == {"onnx"} and {r["backend"] for r in rows["torch"]} == {"torch"}
    for ours, theirs in zip(rows["onnx"], rows["torch"], strict=True):
        assert ours["label"] == theirs["label"]
        assert float(ours["p_malignant"]) == pytest.approx(float(theirs["p_malignant"]), abs=1e-4)


def test_cli_refuses_a_backend_it_cannot_have(tiny_model_dir, tmp_path):
    make_image_folder(tmp_path / "images", {"test": 1})
    with pytest.raises(SystemExit) as error:
        predict_cli([str(tmp_path / "images"), "--model", str(tiny_model_dir), "--backend", "onnx-int8"])
    assert error.value.code == 1


@pytest.mark.slow
def test_timm_backbone_exports_and_predicts_like_torch(tmp_path):
    torch.manual_seed(0)
    model_dir = tmp_path / "timm-tiny"
    config = AsffResNetConfig(backbone="test_efficientnet", fusion_hidden_size=16, head_hidden_size=16, image_size=64)
    AsffResNetForImageClassification(config).save_pretrained(model_dir)
    build_image_processor(64, color_constancy=True).save_pretrained(model_dir)
    report = export_onnx(model_dir, calibration_count=8, verify_count=0)
    assert report["verified"] and report["image_size"] == 64
    assert report["outputs"] == ["logits", "fusion_weights", "stage_low", "stage_high"]
    model, processor, _ = load_classifier(model_dir)
    backend = load_backend(model_dir, model, processor, "onnx")
    image = lesion_image(1, np.random.default_rng(0), 80)
    assert predict(model, processor, image, backend=backend).probabilities == pytest.approx(
        predict(model, processor, image).probabilities, abs=1e-4)


# --------------------------------------------------------------------------- Grad-CAM above the graph's stage maps


@pytest.mark.parametrize("target", ["fused", "stage4", "stage3"])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam"])
def test_grad_cam_on_the_float32_graph_is_the_torch_models(exported, sample, target, method):
    """onnxruntime runs the backbone, torch the layers above its stage maps: the same CAM (every target; stage3's
    gradients also flow through the backbone's last stage, so it runs on torch alone), probabilities, OOD score and
    fusion weights as the whole torch model."""
    from modeling.explain import explain

    model, processor, _ = load_classifier(exported)
    backend = load_backend(exported, model, processor, "onnx")
    assert backend.serves_grad_cam and backend.stage_names == ["stage_low", "stage_high"]
    for image, cam_class in [(sample[0], None), (sample[1], 0), (sample[2], 1)]:
        ours = explain(model, processor, image, target, method, cam_class=cam_class, backend=backend)
        theirs = explain(model, processor, image, target, method, cam_class=cam_class)
        assert ours.cam_label == theirs.cam_label and ours.label == theirs.label
        assert np.abs(ours.cam - theirs.cam).max() <= 1e-4
        assert ours.probabilities == pytest.approx(theirs.probabilities, abs=1e-5)
        assert ours.prediction.ood_score == pytest.approx(theirs.prediction.ood_score, rel=1e-4, abs=1e-4)
        assert np.abs(ours.fusion_weights - theirs.fusion_weights).max() <= 1e-5
    with_tta = explain(model, processor, sample[0], target, method, tta=True, backend=backend)
    assert with_tta.probabilities == pytest.approx(explain(model, processor, sample[0], target, method,
                                                           tta=True).probabilities, abs=1e-5)


@pytest.mark.parametrize("target", ["fused", "stage4"])
def test_grad_cam_on_the_graph_clears_the_gradients_it_leaves(exported, sample, target):
    """Grad-CAM above the graph clears gradients only in the layers above the backbone: with trainable parameters (a
    model in the user's hands; `load_classifier` freezes them) those are the only ones that get any, and a second call
    leaves the same gradients (cleared, not summed) as the first."""
    from modeling.explain import grad_cam
    from modeling.image_utils import load_image
    from modeling.inference import pixel_values

    model, processor, _ = load_classifier(exported)
    backend = load_backend(exported, model, processor, "onnx")
    model.requires_grad_(True)
    pixels = pixel_values(processor, load_image(sample[0]))
    grad_cam(model, pixels, target=target, backend=backend)
    first = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert first and not any(name.startswith("asff_resnet.backbone.") for name in first)
    grad_cam(model, pixels, target=target, backend=backend)
    second = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert second.keys() == first.keys()
    assert all(torch.allclose(second[name], first[name]) for name in first)


def test_only_a_float32_graph_with_the_stage_maps_serves_grad_cam(exported, tmp_path, sample, monkeypatch):
    from modeling import onnx_export
    from modeling.explain import explain
    from modeling.onnx_runtime import grad_cam_backend

    model, processor, _ = load_classifier(exported)
    int8 = load_backend(exported, model, processor, "onnx-int8")
    assert not int8.serves_grad_cam  # its stage maps are quantised: a CAM from them is not the model's
    with pytest.raises(ValueError, match="float32 graph with the stage maps"):
        explain(model, processor, sample[0], backend=int8)
    fp32 = grad_cam_backend(exported, model, processor, int8)  # int8 predicts; the float32 graph serves the CAM
    assert fp32.path == exported / "onnx" / "model.onnx" and fp32.serves_grad_cam
    assert grad_cam_backend(exported, model, processor, fp32) is fp32
    # A graph exported before the stage maps (or by a model whose code lacks `forward_from_stages`): torch does it.
    older = tmp_path / "older"
    shutil.copytree(exported, older)
    monkeypatch.setattr(onnx_export, "graph_outputs", lambda model, size: ["logits", "ood_score", "fusion_weights"])
    onnx_export.export_fp32(model, older / "onnx" / "model.onnx", 32,
                            {p.key: p.value for p in onnx.load(str(exported / "onnx" / "model.onnx")).metadata_props})
    runner = load_backend(older, model, processor, "onnx")
    assert runner.stage_names == [] and not runner.serves_grad_cam
    assert grad_cam_backend(older, model, processor, runner) is None
    assert grad_cam_backend(None, model, processor, None) is None  # torch asked for: torch does everything


def test_a_cached_graph_of_the_older_layout_is_made_again(exported, tmp_path):
    """The cache is keyed by the graph layout too, so a float32 graph cached before the stage maps is not served."""
    from modeling.onnx_runtime import GRAPH_FORMAT

    path = cached_path(exported)
    assert path.parent.name.endswith(f"-f{GRAPH_FORMAT}") and GRAPH_FORMAT == "2"
    meta = {p.key: p.value for p in onnx.load(str(exported / "onnx" / "model.onnx")).metadata_props}
    assert meta["asff.format"] == GRAPH_FORMAT


def test_export_without_int8(exported, tmp_path):
    from modeling.export import main as export_cli

    model_dir = tmp_path / "fp32-only"
    shutil.copytree(exported, model_dir)
    shutil.rmtree(model_dir / "onnx")
    assert export_cli(["--onnx", str(model_dir), "--quantization", "none", "--verify-images", "0"]) == 0
    assert sorted(p.name for p in (model_dir / "onnx").iterdir()) == ["export_report.json", "model.onnx"]
    report = json.loads((model_dir / "onnx" / "export_report.json").read_text())
    assert report["verified"] and report["int8"] is None
    assert "no int8 graph" in " ".join((model_dir / "README.md").read_text().split())
    model, processor, _ = load_classifier(model_dir)
    backend = load_backend(model_dir, model, processor)  # auto: the float32 graph, which also serves Grad-CAM
    assert backend.backend == "onnx" and backend.serves_grad_cam
    with pytest.raises(ValueError, match="compare_quantization"):
        export_onnx(model_dir, quantization="none", compare_quantization=True)


# --------------------------------------------------------------------------- the reference checkpoint


@pytest.mark.slow
def test_the_reference_checkpoint_ships_a_matching_int8_graph():
    """The committed int8 file belongs to the committed weights (exported from them, the same labels and input size)
    and is what `auto` serves; its export report records the checks passed."""
    if not (REFERENCE / "model.safetensors").is_file():
        pytest.skip("the reference checkpoint's weights are not there")
    model, processor, _ = load_classifier(REFERENCE)
    backend = load_backend(REFERENCE, model, processor)
    assert backend is not None and backend.backend == "onnx-int8"
    assert not (REFERENCE / "onnx" / "model.onnx").exists()  # float32 is made on first use (too large to commit)
    assert (REFERENCE / "onnx" / "model_quantized.onnx").stat().st_size < 70e6
    report = json.loads((REFERENCE / "onnx" / "export_report.json").read_text())
    assert report["verified"] and report["weights_sha256"] == weights_fingerprint(REFERENCE)
    assert report["fp32"]["vs_torch"]["images"] == 660 and report["fp32"]["vs_torch"]["decision_agreement"] == 1.0
    fp32, int8 = report["fp32"]["metrics"], report["int8"]["metrics"]
    assert abs(int8["roc_auc"] - fp32["roc_auc"]) <= 0.005 and abs(int8["accuracy"] - fp32["accuracy"]) <= 0.01


@pytest.mark.slow
@pytest.mark.parametrize("name", ["asff-lite0-isic", "asff-lite2-isic"])
def test_the_lite_checkpoints_ship_a_float32_graph_that_serves_predictions_and_grad_cam(name):
    """asff-lite0-isic (16 MB; no int8 graph: it failed its check) and asff-lite2-isic (22 MB) ship `onnx/model.onnx`
    only: it belongs to the committed weights, `auto` serves it, and Grad-CAM above its stage maps is the torch
    model's."""
    from modeling.explain import explain

    model_dir = ROOT / "checkpoints" / name
    model, processor, _ = load_classifier(model_dir)
    backend = load_backend(model_dir, model, processor)
    assert backend.path == model_dir / "onnx" / "model.onnx" and backend.serves_grad_cam
    assert backend.path.stat().st_size < 70e6 and not (model_dir / "onnx" / "model_quantized.onnx").exists()
    report = json.loads((model_dir / "onnx" / "export_report.json").read_text())
    assert report["verified"] and report["int8"] is None and report["weights_sha256"] == weights_fingerprint(model_dir)
    assert report["fp32"]["vs_torch"]["decision_agreement"] == 1.0 and report["fp32"]["metrics"]["images"] == 660
    image = lesion_image(1, np.random.default_rng(3), 300)
    ours, theirs = explain(model, processor, image, backend=backend), explain(model, processor, image)
    assert np.abs(ours.cam - theirs.cam).max() <= 1e-4 and ours.label == theirs.label
    assert ours.probabilities == pytest.approx(theirs.probabilities, abs=1e-5)


@pytest.mark.slow
@pytest.mark.real_data
def test_the_reference_int8_graph_decides_like_torch_on_real_images(real_data):
    """A sample of the ISIC 2020 test split: the int8 graph takes PyTorch's decision and OOD flag on (almost) every
    image; the whole split is checked when the graph is exported (onnx/export_report.json)."""
    from modeling.image_utils import find_images

    if not (REFERENCE / "model.safetensors").is_file():
        pytest.skip("the reference checkpoint's weights are not there")
    paths = find_images(real_data / "test")[::22]  # 30 images, both classes
    model, processor, _ = load_classifier(REFERENCE)
    backend = load_backend(REFERENCE, model, processor, "onnx-int8")
    ours = predict_batch(model, processor, paths, backend=backend)
    theirs = predict_batch(model, processor, paths)
    agree = np.mean([o["label"] == t["label"] for o, t in zip(ours, theirs, strict=True)])
    flags = np.mean([o["in_distribution"] == t["in_distribution"] for o, t in zip(ours, theirs, strict=True)])
    assert agree >= 0.96 and flags >= 0.96, (agree, flags)


# --------------------------------------------------------------------------- the app


def test_the_app_predicts_with_onnxruntime_and_explains_its_decision_with_torch(exported, sample, monkeypatch):
    import app

    model, processor, info = load_classifier(exported)
    backend = load_backend(exported, model, processor)
    demo = app.build_demo(model, processor, info, backend=backend)
    fns = {f.name: f.fn for f in demo.fns.values()}
    image = str(sample[0])
    _, decision, result = fns["run_predict"](image, 0.5, True)
    expected = predict(model, processor, image, tta=True, threshold=0.5, backend=backend)
    assert result["backend"] == "onnx-int8" and result["views"] == 8
    assert result["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    calls = []
    real_explain = app.explain
    monkeypatch.setattr(app, "explain", lambda *a, **k: calls.append(k) or real_explain(*a, **k))
    probs, decision, result, cam, caption, _, _, timing, session = fns["analyse"](image, 0.5, True, "fused", "gradcam")
    assert result["backend"] == "onnx-int8" and result["probabilities"] == pytest.approx(expected.probabilities)
    label2id = {label: index for index, label in info.id2label.items()}
    assert calls[-1]["cam_class"] == label2id[expected.label]  # the CAM explains the decision shown
    assert result["cam_label"] == expected.label and "predict (onnx-int8)" in timing
    # int8 predicts; Grad-CAM runs torch above the float32 graph's stage maps, and the About tab says so
    assert calls[-1]["backend"].path == exported / "onnx" / "model.onnx"
    about = json.dumps(demo.get_config_file(), default=str)
    assert "onnxruntime (onnx-int8" in about and "above the backbone's stage maps from `model.onnx`" in about


def test_the_app_explains_in_one_pass_on_the_float32_graph(exported, sample, monkeypatch):
    """Served by the float32 graph (e.g. a checkpoint that ships no int8 one), one onnxruntime pass gives the
    prediction and the stage maps Grad-CAM needs; `--backend torch` keeps everything on torch."""
    import app

    model, processor, info = load_classifier(exported)
    fp32 = load_backend(exported, model, processor, "onnx")
    monkeypatch.setattr(app.ServedModel, "predict", lambda *a, **k: pytest.fail("a second model run"))
    for backend, cam_backend in [(fp32, fp32), (None, None)]:
        demo = app.build_demo(model, processor, info, backend=backend)
        fns = {f.name: f.fn for f in demo.fns.values()}
        calls, real_explain = [], app.explain
        monkeypatch.setattr(app, "explain",
                            lambda *a, real=real_explain, calls=calls, **k: calls.append(k) or real(*a, **k))
        _, _, result, *_ = fns["analyse"](str(sample[0]), 0.5, False, "fused", "gradcam")
        assert len(calls) == 1 and calls[0]["backend"] is cam_backend
        assert result["backend"] == ("onnx" if backend else "torch")
        assert result["probabilities"] == pytest.approx(
            predict(model, processor, str(sample[0]), threshold=0.5).probabilities, abs=1e-5)
        monkeypatch.setattr(app, "explain", real_explain)


def test_the_app_refuses_a_backend_it_cannot_have(tiny_model_dir):
    import app

    with pytest.raises(SystemExit) as error:
        app.main(["--model", str(tiny_model_dir), "--backend", "onnx-int8"])
    assert "model_quantized.onnx" in str(error.value.code)


# --------------------------------------------------------------------------- the README's snippet


def readme_snippet() -> str:
    """The README's onnxruntime-only snippet, as written there."""
    text = (ROOT / "README.md").read_text()
    start = text.index("**Using the files without this repository**")
    block = text[text.index("```python\n", start) + len("```python\n"):]
    return block[:block.index("```")]


@pytest.mark.parametrize("colour_constancy, resize_mode", [(False, "crop"), (True, "squash")])
def test_the_readme_snippet_preprocesses_and_predicts_like_the_processor(exported, tmp_path, colour_constancy,
                                                                            resize_mode):
    """Without torch or this repository: the same pixels as the saved processor (to one grey level of bicubic
    resampling), then the int8 graph's (float32's where there is none) calibrated probabilities, decision and OOD
    flag."""
    model_dir = tmp_path / "model"
    shutil.copytree(exported, model_dir)
    build_image_processor(32, color_constancy=colour_constancy, resize_mode=resize_mode).save_pretrained(model_dir)
    int8 = not colour_constancy  # and with colour constancy, a model that ships float32 only (as asff-lite0-isic)
    if not int8:
        (model_dir / "onnx" / "model_quantized.onnx").unlink()
    image_path = tmp_path / "wide.png"
    lesion_image(1, np.random.default_rng(2), 90).resize((131, 90)).save(image_path)  # not square
    code = readme_snippet()
    line = 'model_dir, image_path = "checkpoints/asff-lite2-isic", "lesion.jpg"  # a model directory, your image'
    assert line in code and "import torch" not in code and "modeling" not in code
    namespace: dict = {}
    exec(code.replace(line, f"model_dir, image_path = {str(model_dir)!r}, {str(image_path)!r}"), namespace)

    model, processor, info = load_classifier(model_dir)
    from modeling.image_utils import load_image
    from modeling.inference import pixel_values

    pixels = pixel_values(processor, load_image(image_path)).numpy()
    grey_levels = np.abs(namespace["x"] - pixels) * np.asarray(processor.image_std)[:, None, None] * 255
    assert namespace["x"].shape == pixels.shape and grey_levels.max() <= 1.01
    backend = load_backend(model_dir, model, processor, "onnx-int8" if int8 else "onnx")
    expected = predict(model, processor, image_path, backend=backend)
    assert namespace["probs"] == pytest.approx(expected.probabilities, abs=2e-3)
    assert namespace["malignant"] == (expected.label == "malignant")
    assert namespace["flagged"] == (expected.in_distribution is False)
