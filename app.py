"""Gradio demo of the ASFF-ResNet skin-lesion classifier: calibrated probabilities with a decision threshold (and,
with test-time augmentation, their spread), an out-of-distribution warning, Grad-CAM, the learned fusion weights,
batch classification to CSV, and an HTTP API (/predict, /explain, /batch).

    python app.py [--model DIR_OR_HUB_ID] [--models-dir DIR] [--backend auto|onnx-int8|onnx|torch] [--examples DIR]
                  [--host 127.0.0.1] [--port 7860] [--share]

Only wiring lives here; the logic is in `modeling/inference.py` (prediction, decision, OOD flag, batches),
`modeling/explain.py` (Grad-CAM), `modeling/plots.py` (figures), `modeling/serving.py` (the models by name),
`modeling/presentation.py` (how a result reads on screen: the decision line, captions, the batch table's columns)
and `modeling/gradio_components.py` (the few Gradio components changed, and the wrapper that turns errors into
messages). The Hugging Face Space (`space/`) ships this file as `demo.py` and calls the same `serve_or_exit`,
`build_demo_for` and `launch_and_warm_up`.

Start-up: with a model directory that has an ONNX graph, the page and predictions are served from the directory's
files and the graph before torch is imported (the processor's numpy twin gives the same pixels,
`modeling/image_processing_numpy.py`); the torch side (Grad-CAM, the fusion weights, batches) loads in the background
once the page is up, and an analysis asked for before it is ready waits for it.

Models: a dropdown lists every model directory under `--models-dir` (default: checkpoints/ beside this file; a
subfolder with a config.json) and the `--model` one, which is the default. Each is loaded on first use and kept;
switching re-runs the analysis with the selected model's decision rule, and the threshold sliders reset to its
threshold. Predictions (probabilities, TTA, the batch tab) run on onnxruntime when the model directory has ONNX files
(`--backend`, default the fastest it has, see `modeling/onnx_runtime.py`), else on PyTorch; Grad-CAM and the fusion
weights come from PyTorch (only the layers above the backbone when the model has a float32 graph with its stage maps:
`modeling/explain.py`), and the CAM explains the decision shown: by default against the other class (the margin
between their scores; the two classes' own maps look alike), or, unticked, the decided class's score alone.

How the Classify tab behaves:
- a new image (upload, paste or example) runs one analysis (`/explain`); clearing it clears the results;
- the decision is recomputed from the session's cached result whenever the threshold changes, whichever control
  changed it (slider, number box, arrow keys, reset), without running the model again; when the decision flips, the
  Grad-CAM is recomputed for the new class, and it always names the class it explains;
- a failed input (not an image, a decompression bomb, ...) shows its message and clears the image and all results.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

# Figures are only rendered to images here. Naming matplotlib's backend spares it importing pyplot to resolve its
# default on Gradio's first request (Gradio wraps every request in matplotlib's "agg"): ~0.4 s off the first answer.
os.environ.setdefault("MPLBACKEND", "agg")

import gradio as gr

# modeling's modules that need no torch, in dependency order (`import_torch_free_modules`).
TORCH_FREE_MODULES = ("decision", "image_utils", "model_card", "prediction", "image_processing_numpy", "onnx_runtime",
                      "serving", "presentation", "gradio_components")


def import_torch_free_modules() -> None:
    """Imports `TORCH_FREE_MODULES` without running `modeling/__init__.py`, which registers the models with
    transformers' Auto classes and so imports torch, torchvision and transformers (~5.5 s here). With them the app
    serves the page and predictions from a model's files and ONNX graph (`start_without_torch`), and loads torch in
    the background, for Grad-CAM. They are the package's own modules under their own names: importing `modeling` later
    finds them in `sys.modules` (and binds them to the package)."""
    if "modeling" in sys.modules:
        return
    package = Path(importlib.util.find_spec("modeling").origin).parent  # finding a top-level spec runs nothing
    for name in TORCH_FREE_MODULES:
        spec = importlib.util.spec_from_file_location(f"modeling.{name}", package / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)


import_torch_free_modules()

from modeling.gradio_components import BoundedSlider, DecisionLabel, RawUploadImage, user_errors  # noqa: E402
from modeling.image_utils import find_images, load_image  # noqa: E402
from modeling.onnx_runtime import AUTO, BACKENDS, OnnxClassifier  # noqa: E402
from modeling.prediction import ModelInfo, ModelNotFoundError, Prediction, check_model_source  # noqa: E402
from modeling.presentation import (  # noqa: E402
    CAM_METHOD_NAMES,
    CAM_TARGETS,
    OOD_NOT_AVAILABLE,
    cam_image,
    cam_subject,
    decision_html,
    prediction_json,
    result_caption,
    table_columns,
    threshold_problem,
    unique_names,
)
from modeling.serving import (  # noqa: E402, F401 (model_choices, start_without_torch: the app's API, used by tests)
    ModelRegistry,
    ServedModel,
    ServingError,
    model_choices,
    served_model,
    start_without_torch,
)

MODELS_DIR = Path(__file__).resolve().parent / "checkpoints"
# The recommended model: the best on validation across both sources (README, "Shipped models"); the Lite0 model and
# the paper's ASFF-ResNet-50 (from scratch) are in the dropdown.
DEFAULT_MODEL = MODELS_DIR / "asff-lite2-isic"
HOW_TO_GET_A_MODEL = (
    "Train one with `python train_hf.py ...` (see README.md; it saves a model directory), "
    "or pass `--model DIR_OR_HUB_ID` (a directory saved by train_hf.py, or a Hub model id)."
)
DISCLAIMER = (
    "**Research demo, NOT a diagnostic device.** The models were trained on public dermoscopy data sets (ISIC) "
    "for research; they have not been clinically validated and must not be used to diagnose, treat or rule out any "
    "condition. See a dermatologist about any skin lesion that worries you."
)
NO_IMAGE = "Upload an image first."
NO_CARD = "*No model card (README.md) came with this model.*"
LOADING_MODEL = "Loading the model (PyTorch, for Grad-CAM): the first analysis takes a few seconds more."
FUSION_HOW_TO_READ = {
    "channel": "How to read the plot: each channel of the fused map takes weight w from stage3 (blue) and 1 - w from "
               "stage4 (orange); channels are sorted by w, on a log scale.",
    "spatial": "How to read the plot: brighter (yellow) areas take more from the finer stage3 features, darker "
               "(purple) ones from the coarser stage4 features.",
}
BATCH_NAMES_NOTE = (
    "Browsers send file names without their folders, so files that share a name are numbered in upload order "
    "(e.g. `1.jpg (1)`, `1.jpg (2)`)."
)
BATCH_OOD_NOTE = (
    "The label of a file with `in_distribution` false is not meaningful: the image does not look like the dermoscopy "
    "the model was trained on."
)
BATCH_STALE = ("**Out of date:** the threshold or the TTA setting changed since this table was made; its decisions are "
               "still the old setting's. Press *Classify all* again.")
MAX_FILE_SIZE = "20mb"
MAX_BATCH_FILES = 200
CONCURRENCY_LIMIT = 2  # CPU: model forwards are serialised anyway (modeling.inference.MODEL_LOCK), this bounds memory
MAX_EXAMPLES = 8
# After the server answers (see warm_up): long enough for an API client's first prediction to run on a quiet CPU,
# short enough that the torch side (~7 s here) is ready about when a person has picked an image.
WARM_UP_DELAY_S = 1.0
DECISION_CSS = """
p { margin: 0.2em 0; }
.headline { font-size: 1.4rem; }
.detail { font-size: 1rem; }
.ood-note { font-size: 0.85rem; color: var(--body-text-color-subdued); }
.ood-warning { padding: 0.5em 0.75em; border-left: 4px solid #d97706; background: #fef3c7; color: #78350f;
               border-radius: 4px; font-size: 1rem; }
.not-meaningful .headline, .not-meaningful .detail { color: var(--body-text-color-subdued); opacity: 0.6; }
.not-meaningful .headline strong { text-decoration: line-through; }
"""
# Wide Markdown tables (the model card's) scroll sideways on a phone instead of running off the screen; the probability
# bars are greyed out with the headline when the image is out of distribution (the decision is not meaningful).
APP_CSS = """
#model-card table, #about-model table { display: block; max-width: 100%; overflow-x: auto; }
#decision:has(.not-meaningful) ~ #probabilities { opacity: 0.45; }
"""
SCROLL_TO_RESULTS = "() => document.querySelector('#decision')?.scrollIntoView({block: 'start'})"
logger = logging.getLogger(__name__)

# Start-up: torch, torchvision, transformers and the model's torch side (~5.5 s here), Grad-CAM (pytorch_grad_cam, which
# imports scikit-learn) and the figures (matplotlib, ~1.5 s) are not needed to serve the page and predictions from an
# ONNX graph (`start_without_torch`), so they are imported on first use, and loaded in the background just after the
# server answers (`main`, `warm_up`). The CAM choices the UI offers come from the torch-free `modeling.presentation`.
CAM_METHODS = tuple(CAM_METHOD_NAMES)


def explain(*args, **kwargs):
    """`modeling.explain.explain` (imported on first use)."""
    from modeling.explain import explain as explain_image

    return explain_image(*args, **kwargs)


def warm_up(registry: ModelRegistry | None = None) -> None:
    """Loads what the first analysis needs ahead of it: the default model's torch side (when it was started without
    torch) and Grad-CAM's and matplotlib's imports."""
    if registry is not None:
        try:
            registry.get(None)
        except ServingError:  # logged by the registry; an analysis will show the message
            pass
    import modeling.explain  # noqa: F401
    import modeling.plots  # noqa: F401


def reset_request(threshold: float) -> dict[str, float]:
    """A request to put a threshold slider back at `threshold`, for a State whose `.change` sets the slider: the time
    in it makes every request a change, even one to the same value as the last."""
    return {"threshold": threshold, "at": time.monotonic()}


def _open(path: str):
    notes: list[str] = []
    image = load_image(path, notes)
    for note in notes:
        gr.Warning(note)
    return image


def build_demo(model, processor, info: ModelInfo, examples: list[str | Path] | None = None, *,
               backend: OnnxClassifier | None = None, models: dict[str, str] | None = None,
               backend_request: str = AUTO) -> gr.Blocks:
    """The Blocks app for a loaded classifier (see `modeling.inference.load_classifier`), its onnxruntime `backend`
    (None: predictions with torch) and, for the model dropdown, other models by name (`model_choices`), loaded on first
    use with `backend_request`. The dropdown is shown when there is more than one model."""
    return build_demo_for(ModelRegistry(served_model(model, processor, info, backend), models, backend_request),
                          examples)


def build_demo_for(registry: ModelRegistry, examples: list[str | Path] | None = None) -> gr.Blocks:
    """`build_demo` for a registry whose default model may still be loading its torch side (`start_without_torch`)."""
    info = registry.peek(None).info

    def with_torch(model_choice) -> ServedModel:
        """`registry.get`, with a note on screen when the request has to wait for the model to load."""
        if not registry.loaded(model_choice):
            gr.Info(LOADING_MODEL)
        return registry.get(model_choice)

    def analysis_outputs(served: ServedModel, prediction: Prediction, result, timing: str, session: dict):
        return (
            (prediction.label, prediction.probabilities),
            decision_html(prediction),
            prediction_json(prediction, served.info, result.cam_label, served.backend_name, result.cam_against),
            cam_image(result),
            result_caption(result),
            result.fusion_figure,
            " ".join(filter(None, [result.fusion_message, FUSION_HOW_TO_READ.get(served.info.fusion_mode or "")])),
            timing,
            session,
        )

    @user_errors
    def analyse(image_path, threshold, tta, target, method, model_choice=None, contrast=True):
        """Calibrated probabilities, the decision at `threshold`, the out-of-distribution flag and score (and, with
        TTA, the spread over 8 views), a Grad-CAM of the decided class (`contrast`: against the other class) and the
        fusion-weight view."""
        if image_path is None:
            raise gr.Error(NO_IMAGE, print_exception=False)
        served = with_torch(model_choice)
        image = _open(image_path)
        predicted_ms = None
        if served.backend is None or served.cam_backend is served.backend:
            # One pass serves the prediction and the CAM (TTA: 8 views first), on torch or the float32 graph
            result = explain(served.model, served.processor, image, target=target, method=method,
                             threshold=threshold, tta=bool(tta), backend=served.cam_backend, contrast=bool(contrast))
        else:  # another graph predicts (int8; TTA included); the CAM explains its decision
            start = time.perf_counter()
            prediction = served.predict(image, bool(tta), threshold)
            predicted_ms = (time.perf_counter() - start) * 1000
            label2id = {label: index for index, label in served.info.id2label.items()}
            result = explain(served.model, served.processor, image, target=target, method=method,
                             threshold=threshold, cam_class=label2id[prediction.label], backend=served.cam_backend,
                             contrast=bool(contrast))
            result = dataclasses.replace(result, prediction=prediction)
        parts = ", ".join(f"{k} {v:.0f}" for k, v in result.timing_ms.items() if k != "total")
        total = result.timing_ms["total"]
        if predicted_ms is not None:
            parts = f"predict ({served.backend_name}) {predicted_ms:.0f}, " + parts
            total += predicted_ms
        views = f", {result.prediction.views} TTA views" if tta else ""
        timing = f"Inference time: **{total:.0f} ms** ({parts} ms{views}); {cam_subject(result)}"
        session = {"image": image_path, "prediction": result.prediction, "cam_label": result.cam_label,
                   "target": result.target, "method": result.method, "model": served.info.name,
                   "contrast": bool(contrast), "cam_against": result.cam_against}
        return analysis_outputs(served, result.prediction, result, timing, session)

    def reanalyse(image_path, threshold, tta, target, method, model_choice=None, contrast=True):
        """TTA, CAM target, method or contrast changed: analyse again if there is an image (else there are no
        results)."""
        if image_path is None:
            return cleared(model_choice)
        return analyse(image_path, threshold, tta, target, method, model_choice, contrast)

    @user_errors
    def on_threshold(session, threshold):
        """The decision at the threshold now on screen, from the cached probabilities (no model run); the Grad-CAM is
        recomputed only when the decision flipped, for the new class."""
        if not session or abs(session["prediction"].threshold - threshold) < 1e-12:
            probabilities = (session["prediction"].label, session["prediction"].probabilities) if session else None
            return (probabilities, *(gr.skip() for _ in range(6)))  # (no gr.skip() for the Label, see above)
        served = registry.get(session.get("model"))
        prediction = session["prediction"].at_threshold(threshold)
        session = {**session, "prediction": prediction}
        cam = caption = timing = gr.skip()
        if prediction.label != session["cam_label"]:
            label2id = {label: index for index, label in served.info.id2label.items()}
            start = time.perf_counter()
            result = explain(served.model, served.processor, session["image"], target=session["target"],
                             method=session["method"], threshold=threshold, cam_class=label2id[prediction.label],
                             backend=served.cam_backend, contrast=session.get("contrast", True))
            elapsed = (time.perf_counter() - start) * 1000
            session["cam_label"], session["cam_against"] = result.cam_label, result.cam_against
            cam = cam_image(result)
            caption = result_caption(result)
            timing = (f"{cam_subject(result)}, recomputed in **{elapsed:.0f} ms** (the decision changed with the "
                      "threshold; the probabilities are the cached ones)")
        return ((prediction.label, prediction.probabilities), decision_html(prediction),
                prediction_json(prediction, served.info, session["cam_label"], served.backend_name,
                                session.get("cam_against")), cam, caption,
                timing, session)

    def on_threshold_moved(session, threshold, model_choice):
        """The threshold slider's `.change`, with the raw value: one typed out of range into the number box is
        answered with a warning and a request (the `reset` State) to put the slider back at the threshold the decision
        on screen uses, rather than failing the event (a failed event badges every result on screen with "Error")."""
        problem = threshold_problem(threshold)
        if problem:
            valid = session["prediction"].threshold if session else model_threshold(model_choice)
            gr.Warning(f"{problem}: it is back at {valid:.3g}.", title="Threshold out of range")
            return (*on_threshold(session, valid), reset_request(valid))
        return (*on_threshold(session, float(threshold)), gr.skip())

    def cleared(model_choice=None):
        """Empty results and session (when the image is removed)."""
        served = registry.peek(model_choice)
        return (None, "", None, None, "", None, f"Model: {served.fusion_note()}.", "", None)

    def cleared_with_image(model_choice=None):
        """After a failed input: no image (no preview of a file that could not be read) and empty results."""
        return (None, *cleared(model_choice))

    @user_errors
    def run_predict(image_path, threshold, tta, model_choice=None):
        """Calibrated probabilities, the decision at `threshold` and the out-of-distribution flag and score (with TTA,
        the spread over 8 views): no Grad-CAM (API only)."""
        if image_path is None:
            raise gr.Error(NO_IMAGE, print_exception=False)
        served = registry.peek(model_choice)  # no wait for torch: the prediction needs only the graph
        prediction = served.predict(_open(image_path), bool(tta), threshold)
        return ((prediction.label, prediction.probabilities), decision_html(prediction),
                prediction_json(prediction, served.info, backend=served.backend_name))

    @user_errors
    def run_batch(image_paths, threshold, tta, model_choice=None, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
        """One row per file (calibrated probabilities, decision, TTA spread, OOD flag and score, or the file's error)
        and a CSV that also records the model, threshold, TTA setting and backend; and the settings the table was made
        with (a `gr.State`, not part of the API's result), so that moving them marks it out of date."""
        if not image_paths:
            raise gr.Error("Upload one or more image files.", print_exception=False)
        if len(image_paths) > MAX_BATCH_FILES:
            raise gr.Error(f"At most {MAX_BATCH_FILES} files per batch; got {len(image_paths)}.",
                           print_exception=False)
        served = with_torch(model_choice)
        columns = table_columns(served.info)
        done = [0]

        def step(n: int) -> None:
            done[0] += n
            progress((done[0], len(image_paths)), desc="Classifying", unit="images")

        names, numbered = unique_names([str(p) for p in image_paths])
        from modeling.inference import predict_batch, write_csv

        rows = predict_batch(served.model, served.processor, image_paths, threshold=threshold, tta=bool(tta),
                             names=names, progress=step, model_id=served.info.name, backend=served.backend)
        csv_path = write_csv(rows, Path(tempfile.mkdtemp(prefix="asff-batch-")) / "predictions.csv")
        table = {"headers": columns,
                 "data": [["" if row.get(c) is None else row.get(c) for c in columns] for row in rows]}
        flagged = sum(row["in_distribution"] is False for row in rows)
        failed = sum(bool(row["error"]) for row in rows)
        summary = (f"{len(rows)} file(s): model `{served.info.name}` ({served.backend_name}), threshold "
                   f"{threshold:.3f}, TTA {'on' if tta else 'off'}; {flagged} flagged as out of distribution; "
                   f"{failed} unreadable.")
        if flagged:  # the table's label column still holds their decisions
            summary += f" {BATCH_OOD_NOTE}"
        if rows and rows[0]["in_distribution"] is None and not all(row["error"] for row in rows):
            summary += f" {OOD_NOT_AVAILABLE}"
        if numbered:
            summary += f" {BATCH_NAMES_NOTE}"
        return table, str(csv_path), summary, {"threshold": threshold, "tta": bool(tta), "summary": summary}

    def on_batch_settings(made, threshold, tta, model_choice=None):
        """The batch summary, marked out of date while the threshold or TTA setting differs from the one the table was
        made with (its decisions are that threshold's); unchanged when there is no table. Takes the raw threshold: one
        typed out of range goes back to the table's threshold (else the model's), with a warning."""
        problem = threshold_problem(threshold)
        if problem:
            valid = made["threshold"] if made else model_threshold(model_choice)
            gr.Warning(f"{problem}: it is back at {valid:.3g}.", title="Threshold out of range")
            return gr.update(), reset_request(valid)
        if not made:
            return gr.update(), gr.skip()
        if abs(made["threshold"] - float(threshold)) < 1e-12 and made["tta"] == bool(tta):
            return made["summary"], gr.skip()
        return f"{BATCH_STALE} {made['summary']}", gr.skip()

    def threshold_label(served: ServedModel) -> str:
        return f"Decision threshold on p({served.info.id2label.get(1, 'class 1')})"

    def model_threshold(model_choice):
        """The selected model's decision threshold (the reset buttons)."""
        return registry.peek(model_choice).info.decision_threshold

    @user_errors
    def on_model(model_choice, image_path, tta, target, method, contrast=True):
        """Another model: its thresholds on both sliders, its About text, no batch results (they were the other
        model's), and the analysis of the image on screen re-run with it (decision, threshold, CAM all from the
        selected model)."""
        served = registry.get(model_choice)
        threshold_value = served.info.decision_threshold
        sliders = [gr.update(value=threshold_value, label=threshold_label(served)) for _ in range(2)]
        about = [served.about(), served.info.card_text or NO_CARD]
        batch = (gr.update(value={"headers": table_columns(served.info), "data": []},
                           headers=table_columns(served.info)), None, "", None)
        if image_path is None:
            return (*sliders, *about, *batch, *cleared(model_choice))
        return (*sliders, *about, *batch, *analyse(image_path, threshold_value, tta, target, method, model_choice,
                                                   contrast))

    default = registry.peek(None)
    with gr.Blocks(title="ASFF skin-lesion classifier (research demo)", analytics_enabled=False) as demo:
        gr.Markdown(f"# ASFF skin-lesion classifier\n{DISCLAIMER}", elem_id="disclaimer")
        session = gr.State(None)
        threshold_reset, batch_threshold_reset = gr.State(None), gr.State(None)  # see `reset_request`
        model_choice = gr.Dropdown(registry.names, value=registry.default_name, label="Model", elem_id="model",
                                   visible=len(registry.names) > 1, interactive=True,
                                   info="Every model directory found; each loads on first use")
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    image = RawUploadImage(label="Lesion image", type="filepath", sources=["upload", "clipboard"],
                                           height=300, elem_id="lesion-image")
                    # Gradio's own reset button goes back to the value the page loaded with, not the selected
                    # model's threshold: hidden, and a button of ours resets to the model's.
                    threshold = BoundedSlider(
                        0.0, 1.0, value=info.decision_threshold, step=0.01, elem_id="threshold",
                        label=threshold_label(default), buttons=[],
                        info="Default: the threshold chosen on validation (model config), else 0.5")
                    reset_threshold = gr.Button("↺ The model's threshold", size="sm", elem_id="reset-threshold")
                    tta = gr.Checkbox(False, label="Test-time augmentation (8 flips/rotations, averaged; shows the "
                                                   "spread)", elem_id="tta")
                    with gr.Row():
                        target = gr.Radio([(v, k) for k, v in CAM_TARGETS.items()], value="fused",
                                          label="Grad-CAM target layer")
                        method = gr.Dropdown(list(CAM_METHODS), value="gradcam", label="CAM method")
                    # The margin: with one head over shared features, the two classes' own maps look alike.
                    contrast = gr.Checkbox(True, label="CAM against the other class (what favoured the decided class "
                                                       "over the other; off: what raised its score alone)",
                                           elem_id="contrast")
                    analyse_button = gr.Button("Analyse", variant="primary", elem_id="analyse")
                with gr.Column():
                    decision = gr.HTML(elem_id="decision", css_template=DECISION_CSS, js_on_load=None,
                                       label="Decision")
                    probs = DecisionLabel(label="Class probabilities (calibrated)", show_heading=False,
                                          elem_id="probabilities")
                    cam = gr.Image(label="Class activation map", type="numpy",
                                   interactive=False, format="png", height=320, elem_id="cam")
                    caption = gr.Markdown(elem_id="cam-caption", label="Grad-CAM caption")
                    timing = gr.Markdown(elem_id="timing", label="Timing")
            fusion_plot = gr.Plot(label="Fusion weights", show_label=False, elem_id="fusion-plot")  # no badge over it
            fusion_text = gr.Markdown(f"Model: {default.fusion_note()}.", elem_id="fusion-text",
                                      label="Fusion summary")
            with gr.Accordion("Prediction as JSON (what the API returns)", open=False):
                result_json = gr.JSON(label="Prediction", elem_id="prediction-json")
            # A Dataset of the example paths: a click puts the path into the image and analyses it.
            example_set = (gr.Dataset(components=[image], samples=[[str(p)] for p in examples], label="Examples",
                                      type="index", elem_id="examples") if examples else None)
        with gr.Tab("Batch"):
            files = gr.File(file_count="multiple", label="Images", type="filepath", elem_id="batch-files")
            with gr.Row():
                with gr.Column(min_width=240):
                    batch_threshold = BoundedSlider(
                        0.0, 1.0, value=info.decision_threshold, step=0.01, buttons=[],
                        label=threshold_label(default), elem_id="batch-threshold")
                    reset_batch_threshold = gr.Button("↺ The model's threshold", size="sm",
                                                      elem_id="reset-batch-threshold")
                batch_tta = gr.Checkbox(False, label="Test-time augmentation")
            batch_button = gr.Button("Classify all", variant="primary")
            batch_summary = gr.Markdown(elem_id="batch-summary", label="Batch summary")
            batch_made = gr.State(None)  # the settings the table on screen was made with
            # `file` and `label` pinned (on screen on a phone while the rest scrolls sideways), fixed widths so that
            # empty columns do not squeeze their headers into a tall stack.
            columns = table_columns(info)
            widths = {"file": "120px", "label": "110px", "in_distribution": "150px", "error": "220px",
                      **{c: "115px" for c in columns if c.startswith("p_")}}  # "p_malignant" on one line
            table = gr.Dataframe(value={"headers": columns, "data": []}, headers=columns, interactive=False,
                                 wrap=True, pinned_columns=2, column_widths=[widths.get(c, "95px") for c in columns],
                                 elem_id="batch-table", label="Predictions (a file that cannot be read gets its error)")
            csv_file = gr.File(label="Download CSV (with the model, threshold, TTA setting and backend)")
        with gr.Tab("About"):
            about = gr.Markdown(default.about(), elem_id="about-model")
            card = gr.Markdown(info.card_text or NO_CARD, elem_id="model-card")

        inputs = [image, threshold, tta, target, method, model_choice, contrast]
        outputs = [probs, decision, result_json, cam, caption, fusion_plot, fusion_text, timing, session]
        threshold_outputs = [probs, decision, result_json, cam, caption, timing, session]

        def after_analysis(event) -> None:
            # A failed input leaves nothing stale on screen (nor its preview); a threshold moved while the analysis
            # ran is applied once it is done.
            event.failure(cleared_with_image, [model_choice], [image, *outputs], api_visibility="private",
                          queue=False, show_progress="hidden")
            event.success(on_threshold, [session, threshold], threshold_outputs, api_visibility="private",
                          show_progress="hidden")

        # One analysis per new image: `.upload` (not `.change`, which also fires on clear and on programmatic
        # updates such as clearing after a failure).
        after_analysis(gr.on([image.upload, analyse_button.click], analyse, inputs, outputs, api_name="explain"))
        after_analysis(gr.on([tta.input, target.input, method.input, contrast.input], reanalyse, inputs, outputs,
                             api_visibility="private"))
        if example_set is not None:
            pick = example_set.click(lambda index: str(examples[index]), example_set, image, api_visibility="private",
                                     queue=False, show_progress="hidden")
            analysed = pick.then(analyse, inputs, outputs, api_visibility="private")
            after_analysis(analysed)
            # The examples sit below the results: on a phone the results would be a screen above, out of sight.
            # (`scroll_to_output=True` does not scroll in this Gradio.)
            analysed.success(None, js=SCROLL_TO_RESULTS, queue=False, show_progress="hidden")
        image.clear(cleared, [model_choice], outputs, api_visibility="private", queue=False, show_progress="hidden")
        # `.change` covers every way the threshold moves: dragging, arrow keys, the number box, the reset button.
        # The raw value (`preprocess=False`), so that one typed out of range is answered, not failed on; putting the
        # slider back goes through a State (`reset_request`) because a handler that lists the slider among its outputs
        # would have to answer gr.skip() otherwise, which rebuilds the slider for the session on every valid move.
        threshold.change(on_threshold_moved, [session, threshold, model_choice], [*threshold_outputs, threshold_reset],
                         api_visibility="private", trigger_mode="always_last", show_progress="minimal",
                         preprocess=False)
        threshold_reset.change(lambda reset: reset["threshold"], threshold_reset, threshold, api_visibility="private",
                               show_progress="hidden")
        # `.input`: the user picked a model (not a programmatic change). A model that fails to load shows its error
        # and leaves the image and results as they were.
        model_choice.input(on_model, [model_choice, image, tta, target, method, contrast],
                           [threshold, batch_threshold, about, card, table, csv_file, batch_summary, batch_made,
                            *outputs],
                           api_visibility="private").success(
            on_threshold, [session, threshold], threshold_outputs, api_visibility="private", show_progress="hidden")
        reset_threshold.click(model_threshold, [model_choice], [threshold], api_visibility="private", queue=False)
        reset_batch_threshold.click(model_threshold, [model_choice], [batch_threshold], api_visibility="private",
                                    queue=False)
        gr.on([], run_predict, [image, threshold, tta, model_choice], [probs, decision, result_json],
              api_name="predict")
        batch_button.click(run_batch, [files, batch_threshold, batch_tta, model_choice],
                           [table, csv_file, batch_summary, batch_made], api_name="batch", concurrency_limit=1)
        gr.on([batch_threshold.change, batch_tta.change], on_batch_settings,
              [batch_made, batch_threshold, batch_tta, model_choice], [batch_summary, batch_threshold_reset],
              api_visibility="private", show_progress="hidden", preprocess=False)  # queued: a gr.Warning needs it
        batch_threshold_reset.change(lambda reset: reset["threshold"], batch_threshold_reset, batch_threshold,
                                     api_visibility="private", show_progress="hidden")
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=64)
    return demo


def launch_demo(demo: gr.Blocks, host: str | None = None, port: int | None = None, share: bool = False,
                allowed_paths: list[str] | None = None, **kwargs):
    """Launches with the app's limits; `host`/`port` None leave Gradio's defaults (and its GRADIO_SERVER_* env)."""
    return demo.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_FILE_SIZE,
                       allowed_paths=allowed_paths, css=APP_CSS, **kwargs)


def load_or_exit(source: str | Path):
    """`load_classifier`, or a clear message and exit status 1 (no traceback) when there is no usable model."""
    if Path(source) == DEFAULT_MODEL and not DEFAULT_MODEL.is_dir():
        sys.exit(f"No model at {DEFAULT_MODEL} (the default checkpoint is not there yet). {HOW_TO_GET_A_MODEL}")
    from modeling.inference import load_classifier

    try:
        return load_classifier(source)
    except Exception as error:  # missing directory, unknown Hub id, offline, incompatible files
        sys.exit(f"Could not load a model from {source!s}: {type(error).__name__}: {error}\n{HOW_TO_GET_A_MODEL}")


def backend_or_exit(source: str | Path, model, processor, backend: str = AUTO) -> OnnxClassifier | None:
    """The onnxruntime graph that serves `source`'s predictions (`load_backend`; None: torch), or a clear message and
    exit status 1 when an explicitly requested backend cannot be had or does not match the model."""
    from modeling.onnx_runtime import load_backend

    try:
        return load_backend(source, model, processor, backend)
    except Exception as error:  # OnnxUnavailableError, OnnxMismatchError, a failed first-use export
        sys.exit(f"--backend {backend}: {type(error).__name__}: {error}")


def pick_examples(folder: str | Path, limit: int = MAX_EXAMPLES) -> list[Path]:
    """A handful of images spread over the (sorted, recursive) folder, so every class subfolder is likely sampled."""
    paths = find_images(folder)
    if not paths:
        raise SystemExit(f"--examples: no images found under {folder}")
    return paths[:: max(1, len(paths) // limit)][:limit]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model directory or Hub id (default: %(default)s)")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR,
                        help="the model dropdown lists every model directory in this folder (default: %(default)s)")
    parser.add_argument("--backend", choices=(AUTO, *BACKENDS), default=AUTO,
                        help="what computes the predictions (default: %(default)s, the fastest ONNX graph the model "
                             "directory has, else torch); Grad-CAM uses torch, above the float32 graph's backbone "
                             "when there is one")
    parser.add_argument("--examples", type=Path, help="folder of example images (searched recursively)")
    parser.add_argument("--host", default=None, help="server name, e.g. 0.0.0.0 (default: Gradio's, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="server port (default: Gradio's, 7860)")
    parser.add_argument("--share", action="store_true", help="create a public Gradio share link")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    examples = pick_examples(args.examples) if args.examples else None
    registry = ModelRegistry(serve_or_exit(args.model, args.backend), model_choices(args.models_dir, args.model),
                             args.backend)
    demo = build_demo_for(registry, examples)
    launch_and_warm_up(demo, registry, args.host, args.port, args.share,
                       allowed_paths=[str(args.examples.resolve())] if args.examples else None)


def serve_or_exit(source: str | Path, backend: str = AUTO) -> ServedModel:
    """The model to serve: from its files and ONNX graph, torch left for later, where it can be
    (`start_without_torch`), else loaded whole; a clear message and exit status 1 when there is no usable model or an
    explicitly requested backend cannot be had."""
    if Path(source) == DEFAULT_MODEL and not DEFAULT_MODEL.is_dir():
        load_or_exit(source)  # the message saying how to get a model
    try:
        check_model_source(source)  # a mistyped path: said at once, before torch is imported
    except ModelNotFoundError as error:
        sys.exit(f"Could not load a model from {source!s}: {error}\n{HOW_TO_GET_A_MODEL}")
    try:
        served = start_without_torch(source, backend)
    except Exception as error:  # an explicit backend whose graph does not match the model
        sys.exit(f"--backend {backend}: {type(error).__name__}: {error}")
    if served is None:
        model, processor, info = load_or_exit(source)
        served = served_model(model, processor, info, backend_or_exit(source, model, processor, backend))
    return served


def launch_and_warm_up(demo: gr.Blocks, registry: ModelRegistry, *args, **kwargs) -> None:
    """`launch_demo`, then the torch side (the default model's weights, for Grad-CAM; Grad-CAM's and matplotlib's
    imports) loads in the background once the page is up: predictions do not wait for it, and an analysis asked for
    before it is ready waits for it. Blocks while the server runs."""
    launch_demo(demo, *args, prevent_thread_lock=True, **kwargs)
    timer = threading.Timer(WARM_UP_DELAY_S, warm_up, kwargs={"registry": registry})
    timer.daemon = True
    timer.start()
    demo.block_thread()


if __name__ == "__main__":
    main()
