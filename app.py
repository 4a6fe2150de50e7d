"""Gradio demo of the ASFF-ResNet skin-lesion classifier: calibrated probabilities with a decision threshold (and,
with test-time augmentation, their spread), an out-of-distribution warning, Grad-CAM, the learned fusion weights,
batch classification to CSV, and an HTTP API (/predict, /explain, /batch).

    python app.py [--model DIR_OR_HUB_ID] [--examples DIR] [--host 127.0.0.1] [--port 7860] [--share]

Only wiring lives here; the logic is in `modeling/inference.py` (prediction, decision, OOD flag, batches),
`modeling/explain.py` (Grad-CAM) and `modeling/plots.py` (figures). The Hugging Face Space (`space/`) ships this file
as `demo.py` and calls the same `build_demo` and `launch_demo`.

How the Classify tab behaves:
- a new image (upload, paste or example) runs one analysis (`/explain`); clearing it clears the results;
- the decision is recomputed from the session's cached result whenever the threshold changes, whichever control
  changed it (slider, number box, arrow keys, reset), without running the model again; when the decision flips, the
  Grad-CAM is recomputed for the new class, and it always names the class it explains;
- a failed input (not an image, a decompression bomb, ...) shows its message and clears the image and all results.
"""

from __future__ import annotations

import argparse
import functools
import html
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import gradio as gr
import numpy as np

from modeling.explain import CAM_HOW_TO_READ, CAM_METHODS, CAM_TARGETS, explain
from modeling.image_utils import ImageLoadError, find_images, load_image
from modeling.inference import OOD_WARNING, ModelInfo, Prediction, load_classifier, predict, predict_batch, write_csv
from modeling.plots import with_colour_scale

DEFAULT_MODEL = Path(__file__).resolve().parent / "checkpoints" / "asff-resnet50-isic2020"
HOW_TO_GET_A_MODEL = (
    "Train one with `python train_hf.py ...` (see README.md; it saves a model directory), "
    "or pass `--model DIR_OR_HUB_ID` (a directory saved by train_hf.py, or a Hub model id)."
)
DISCLAIMER = (
    "**Research demo, NOT a diagnostic device.** The model was trained on a public dermoscopy data set (ISIC 2020) "
    "for research; it has not been clinically validated and must not be used to diagnose, treat or rule out any "
    "condition. See a dermatologist about any skin lesion that worries you."
)
NO_IMAGE = "Upload an image first."
OOD_NOT_AVAILABLE = "Out-of-distribution check not available for this model."
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
MAX_FILE_SIZE = "20mb"
MAX_BATCH_FILES = 200
CONCURRENCY_LIMIT = 2  # CPU: model forwards are serialised anyway (modeling.inference.MODEL_LOCK), this bounds memory
MAX_EXAMPLES = 8
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
logger = logging.getLogger(__name__)


# `raw_upload` and `decision_label` override a method on the component instance (a subclass would make Gradio write a
# .pyi stub next to this file). Never return gr.update(...) or gr.skip() for such a component: Gradio then rebuilds it
# for the session from its constructor arguments, without the override.


def raw_upload(component: gr.Image) -> gr.Image:
    """Hands the handler the uploaded file's path undecoded: gr.Image's own decoding would fail on a bad file before
    the handler runs, with no useful message, while `modeling.image_utils.load_image` says what is wrong."""
    decode = component.preprocess

    def preprocess(payload):
        if payload is None or payload.path is None or (payload.url or "").startswith("data:"):
            return decode(payload)
        return str(payload.path)  # Gradio has already checked that the path is an upload in its cache

    component.preprocess = preprocess
    return component


def decision_label(component: gr.Label) -> gr.Label:
    """Lets the handler return `(label, {class: probability})`, so that the Label's `label` (what the API returns)
    is the thresholded decision rather than the most probable class."""
    encode = component.postprocess

    def postprocess(value):
        if isinstance(value, tuple):
            label, probs = value
            data = encode(probs)
            data.label = label
            return data
        return encode(value)

    component.postprocess = postprocess
    return component


def _user_errors(fn):
    """Every failure reaches the UI as a short message (gr.Error), never a stack trace; the server keeps serving."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except ImageLoadError as error:  # the input is not a usable image: the message is for the user
            raise gr.Error(str(error), print_exception=False) from None
        except Exception:  # a bug: logged with its traceback, a short message for the user
            logger.exception("request failed")
            raise gr.Error("Internal error while processing the request; see the server log.",
                           print_exception=False) from None

    return wrapper


def _open(path: str):
    notes: list[str] = []
    image = load_image(path, notes)
    for note in notes:
        gr.Warning(note)
    return image


def probability_text(prediction: Prediction) -> str:
    """'p(malignant) = 0.620 ± 0.050 (range 0.550–0.700 over 8 views)' for a two-class prediction (the spread with
    TTA only); the decided class's probability otherwise."""
    labels = list(prediction.probabilities)
    name = labels[1] if len(labels) == 2 else prediction.label
    text = f"p({name}) = {prediction.probabilities[name]:.3f}"
    if prediction.spread is not None:
        text += f" ± {prediction.spread:.3f}"
        if prediction.interval is not None:
            low, high = prediction.interval
            text += f" (range {low:.3f}–{high:.3f} over {prediction.views} views)"
    return text


def ood_text(prediction: Prediction) -> str:
    if prediction.in_distribution is None:
        return OOD_NOT_AVAILABLE
    verdict = "above" if prediction.in_distribution is False else "within"
    return (f"Out-of-distribution score {prediction.ood_score:.2f}, {verdict} the model's threshold "
            f"{prediction.ood_threshold:.2f}.")


def _text(value: str) -> str:
    return html.escape(value, quote=False)


def decision_html(prediction: Prediction) -> str:
    """The headline: the decision at the threshold shown, the probability it rests on (± its TTA spread), and the
    out-of-distribution verdict; greyed out under a warning when the image is out of distribution."""
    ood = prediction.in_distribution is False
    parts = []
    if ood:
        parts.append(f'<p class="ood-warning" role="alert"><strong>Warning:</strong> {_text(OOD_WARNING)}</p>')
    headline = f"Prediction: <strong>{_text(prediction.label)}</strong>"
    if ood:
        headline += " (not meaningful)"
    parts.append(f'<p class="headline">{headline}</p>')
    if len(prediction.probabilities) == 2:
        positive = list(prediction.probabilities)[1]
        sign = "≥" if prediction.label == positive else "<"  # the decision already applied the rule
        parts.append(f'<p class="detail">{_text(probability_text(prediction))} {sign} threshold '
                     f"{prediction.threshold:.2f}</p>")
    else:
        parts.append(f'<p class="detail">{_text(probability_text(prediction))} (most probable class)</p>')
    parts.append(f'<p class="ood-note">{_text(ood_text(prediction))}</p>')
    return f'<div class="decision{" not-meaningful" if ood else ""}">{"".join(parts)}</div>'


def prediction_json(prediction: Prediction, info: ModelInfo, cam_label: str | None = None) -> dict:
    """What the API returns besides the components: `Prediction.as_dict()` with the model's name (and the class the
    Grad-CAM explains)."""
    data = {"model": info.name, **prediction.as_dict()}
    if cam_label is not None:
        data["cam_label"] = cam_label
    return data


def cam_caption(cam_label: str, target: str, method: str) -> str:
    return (f"**Grad-CAM of *{cam_label}*** ({CAM_TARGETS.get(target, target)}, {method}). "
            + CAM_HOW_TO_READ.format(label=cam_label))


def cam_image(result) -> np.ndarray:
    """The CAM overlay with its colour scale, whose high end names the class it explains."""
    return with_colour_scale(result.cam_overlay, "low", f"high: {result.cam_label}")


def unique_names(paths: list[str]) -> tuple[list[str], bool]:
    """File names for the batch table: the name alone when it is unique, `name (k)` (k-th in upload order) when
    several files share it. Returns the names and whether any were numbered."""
    names = [Path(p).name for p in paths]
    counts = Counter(names)
    seen: Counter[str] = Counter()
    unique = []
    for name in names:
        if counts[name] > 1:
            seen[name] += 1
            unique.append(f"{name} ({seen[name]})")
        else:
            unique.append(name)
    return unique, any(n > 1 for n in counts.values())


def table_columns(info: ModelInfo) -> list[str]:
    """The batch table's columns (the CSV adds the settings: model, threshold, tta); `label` right after `file`, so
    that it stays visible on a phone."""
    return ["file", "label", *(f"p_{label}" for label in info.id2label.values()), "p_spread", "in_distribution",
            "ood_score", "error"]


def build_demo(model, processor, info: ModelInfo, examples: list[str | Path] | None = None) -> gr.Blocks:
    """The Blocks app for one loaded classifier (see `modeling.inference.load_classifier`)."""
    fusion_note = {
        "channel": "channel fusion (one stage3 weight per channel)",
        "spatial": "spatial fusion (one stage3 weight per pixel)",
        "none": "plain ResNet, no fusion",
        None: f"{info.model_type} (not an ASFF-ResNet)",
    }[info.fusion_mode]
    label2id = {label: index for index, label in info.id2label.items()}
    columns = table_columns(info)

    def analysis_outputs(prediction: Prediction, result, timing: str, session: dict):
        return (
            (prediction.label, prediction.probabilities),
            decision_html(prediction),
            prediction_json(prediction, info, result.cam_label),
            cam_image(result),
            cam_caption(result.cam_label, result.target, result.method),
            result.fusion_figure,
            " ".join(filter(None, [result.fusion_message, FUSION_HOW_TO_READ.get(info.fusion_mode or "")])),
            timing,
            session,
        )

    @_user_errors
    def analyse(image_path, threshold, tta, target, method):
        """Calibrated probabilities, the decision at `threshold`, the out-of-distribution flag and score (and, with
        TTA, the spread over 8 views), a Grad-CAM of the decided class and the fusion-weight view."""
        if image_path is None:
            raise gr.Error(NO_IMAGE, print_exception=False)
        result = explain(model, processor, _open(image_path), target=target, method=method, threshold=threshold,
                         tta=bool(tta))
        parts = ", ".join(f"{k} {v:.0f}" for k, v in result.timing_ms.items() if k != "total")
        views = f", {result.prediction.views} TTA views" if tta else ""
        timing = (f"Inference time: **{result.timing_ms['total']:.0f} ms** ({parts} ms{views}); "
                  f"Grad-CAM of *{result.cam_label}*")
        session = {"image": image_path, "prediction": result.prediction, "cam_label": result.cam_label,
                   "target": result.target, "method": result.method}
        return analysis_outputs(result.prediction, result, timing, session)

    def reanalyse(image_path, threshold, tta, target, method):
        """TTA, CAM target or method changed: analyse again if there is an image (else there are no results)."""
        if image_path is None:
            return cleared()
        return analyse(image_path, threshold, tta, target, method)

    @_user_errors
    def on_threshold(session, threshold):
        """The decision at the threshold now on screen, from the cached probabilities (no model run); the Grad-CAM is
        recomputed only when the decision flipped, for the new class."""
        if not session or abs(session["prediction"].threshold - threshold) < 1e-12:
            probabilities = (session["prediction"].label, session["prediction"].probabilities) if session else None
            return (probabilities, *(gr.skip() for _ in range(6)))  # (no gr.skip() for the Label, see above)
        prediction = session["prediction"].at_threshold(threshold)
        session = {**session, "prediction": prediction}
        cam = caption = timing = gr.skip()
        if prediction.label != session["cam_label"]:
            start = time.perf_counter()
            result = explain(model, processor, session["image"], target=session["target"], method=session["method"],
                             threshold=threshold, cam_class=label2id[prediction.label])
            elapsed = (time.perf_counter() - start) * 1000
            session["cam_label"] = result.cam_label
            cam = cam_image(result)
            caption = cam_caption(result.cam_label, result.target, result.method)
            timing = (f"Grad-CAM recomputed for *{result.cam_label}* in **{elapsed:.0f} ms** (the decision changed "
                      "with the threshold; the probabilities are the cached ones)")
        return ((prediction.label, prediction.probabilities), decision_html(prediction),
                prediction_json(prediction, info, session["cam_label"]), cam, caption, timing, session)

    def cleared():
        """Empty results and session (when the image is removed)."""
        return (None, "", None, None, "", None, f"Model: {fusion_note}.", "", None)

    def cleared_with_image():
        """After a failed input: no image (no preview of a file that could not be read) and empty results."""
        return (None, *cleared())

    @_user_errors
    def run_predict(image_path, threshold, tta):
        """Calibrated probabilities, the decision at `threshold` and the out-of-distribution flag and score (with TTA,
        the spread over 8 views): no Grad-CAM (API only)."""
        if image_path is None:
            raise gr.Error(NO_IMAGE, print_exception=False)
        prediction = predict(model, processor, _open(image_path), tta=bool(tta), threshold=threshold)
        return ((prediction.label, prediction.probabilities), decision_html(prediction),
                prediction_json(prediction, info))

    @_user_errors
    def run_batch(image_paths, threshold, tta, progress=gr.Progress()):  # noqa: B008 (Gradio's injection idiom)
        """One row per file (calibrated probabilities, decision, TTA spread, OOD flag and score, or the file's error)
        and a CSV that also records the model, threshold and TTA setting."""
        if not image_paths:
            raise gr.Error("Upload one or more image files.", print_exception=False)
        if len(image_paths) > MAX_BATCH_FILES:
            raise gr.Error(f"At most {MAX_BATCH_FILES} files per batch; got {len(image_paths)}.",
                           print_exception=False)
        done = [0]

        def step(n: int) -> None:
            done[0] += n
            progress((done[0], len(image_paths)), desc="Classifying", unit="images")

        names, numbered = unique_names([str(p) for p in image_paths])
        rows = predict_batch(model, processor, image_paths, threshold=threshold, tta=bool(tta), names=names,
                             progress=step, model_id=info.name)
        csv_path = write_csv(rows, Path(tempfile.mkdtemp(prefix="asff-batch-")) / "predictions.csv")
        table = {"headers": columns,
                 "data": [["" if row.get(c) is None else row.get(c) for c in columns] for row in rows]}
        flagged = sum(row["in_distribution"] is False for row in rows)
        failed = sum(bool(row["error"]) for row in rows)
        summary = (f"{len(rows)} file(s): model `{info.name}`, threshold {threshold:.2f}, TTA {'on' if tta else 'off'}"
                   f"; {flagged} flagged as out of distribution; {failed} unreadable.")
        if rows and rows[0]["in_distribution"] is None and not all(row["error"] for row in rows):
            summary += f" {OOD_NOT_AVAILABLE}"
        if numbered:
            summary += f" {BATCH_NAMES_NOTE}"
        return table, str(csv_path), summary

    positive = info.id2label.get(1, "class 1")
    with gr.Blocks(title="ASFF-ResNet skin-lesion classifier (research demo)", analytics_enabled=False) as demo:
        gr.Markdown(f"# ASFF-ResNet skin-lesion classifier\n{DISCLAIMER}", elem_id="disclaimer")
        session = gr.State(None)
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    image = raw_upload(gr.Image(label="Lesion image", type="filepath", sources=["upload", "clipboard"],
                                                height=300, elem_id="lesion-image"))
                    threshold = gr.Slider(0.0, 1.0, value=info.decision_threshold, step=0.01, elem_id="threshold",
                                          label=f"Decision threshold on p({positive})",
                                          info="Default: the threshold chosen on validation (model config), else 0.5")
                    tta = gr.Checkbox(False, label="Test-time augmentation (8 flips/rotations, averaged; shows the "
                                                   "spread)", elem_id="tta")
                    with gr.Row():
                        target = gr.Radio([(v, k) for k, v in CAM_TARGETS.items()], value="fused",
                                          label="Grad-CAM target layer")
                        method = gr.Dropdown(list(CAM_METHODS), value="gradcam", label="CAM method")
                    analyse_button = gr.Button("Analyse", variant="primary", elem_id="analyse")
                with gr.Column():
                    decision = gr.HTML(elem_id="decision", css_template=DECISION_CSS, js_on_load=None,
                                       label="Decision")
                    probs = decision_label(gr.Label(label="Class probabilities (calibrated)", show_heading=False,
                                                    elem_id="probabilities"))
                    cam = gr.Image(label="Grad-CAM", type="numpy", interactive=False, format="png", height=320,
                                   elem_id="cam")
                    caption = gr.Markdown(elem_id="cam-caption", label="Grad-CAM caption")
                    timing = gr.Markdown(elem_id="timing", label="Timing")
            fusion_plot = gr.Plot(label="Fusion weights", show_label=False, elem_id="fusion-plot")  # no badge over it
            fusion_text = gr.Markdown(f"Model: {fusion_note}.", elem_id="fusion-text", label="Fusion summary")
            with gr.Accordion("Prediction as JSON (what the API returns)", open=False):
                result_json = gr.JSON(label="Prediction", elem_id="prediction-json")
            # A Dataset rather than gr.Examples, whose click sends gr.update(...) to the image (see raw_upload).
            example_set = (gr.Dataset(components=[image], samples=[[str(p)] for p in examples], label="Examples",
                                      type="index", elem_id="examples") if examples else None)
        with gr.Tab("Batch"):
            files = gr.File(file_count="multiple", label="Images", type="filepath", elem_id="batch-files")
            with gr.Row():
                batch_threshold = gr.Slider(0.0, 1.0, value=info.decision_threshold, step=0.01,
                                            label=f"Decision threshold on p({positive})")
                batch_tta = gr.Checkbox(False, label="Test-time augmentation")
            batch_button = gr.Button("Classify all", variant="primary")
            batch_summary = gr.Markdown(elem_id="batch-summary", label="Batch summary")
            # `file` and `label` pinned (on screen on a phone while the rest scrolls sideways), fixed widths so that
            # empty columns do not squeeze their headers into a tall stack.
            widths = {"file": "120px", "label": "110px", "in_distribution": "120px", "error": "220px"}
            table = gr.Dataframe(value={"headers": columns, "data": []}, headers=columns, interactive=False,
                                 wrap=True, pinned_columns=2, column_widths=[widths.get(c, "95px") for c in columns],
                                 elem_id="batch-table", label="Predictions (a file that cannot be read gets its error)")
            csv_file = gr.File(label="Download CSV (with the model, threshold and TTA setting)")
        with gr.Tab("About"):
            ood = (f"Mahalanobis distance on pooled features, flagged above {info.ood_threshold:.3g}"
                   if info.ood_threshold is not None else "not available for this model")
            gr.Markdown(
                f"**Model:** `{info.name}` ({fusion_note}; {info.num_parameters / 1e6:.1f} M parameters; "
                f"input {info.image_size} px). Decision threshold {info.decision_threshold:.2f} on calibrated "
                f"p({positive}); calibration temperature {info.temperature:.2f}; out-of-distribution check: {ood}."
            )
            gr.Markdown(info.card_text or "*No model card (README.md) came with this model.*")

        inputs = [image, threshold, tta, target, method]
        outputs = [probs, decision, result_json, cam, caption, fusion_plot, fusion_text, timing, session]
        threshold_outputs = [probs, decision, result_json, cam, caption, timing, session]

        def after_analysis(event) -> None:
            # A failed input leaves nothing stale on screen (nor its preview); a threshold moved while the analysis
            # ran is applied once it is done.
            event.failure(cleared_with_image, None, [image, *outputs], api_visibility="private", queue=False,
                          show_progress="hidden")
            event.success(on_threshold, [session, threshold], threshold_outputs, api_visibility="private",
                          show_progress="hidden")

        # One analysis per new image: `.upload` (not `.change`, which also fires on clear and on programmatic
        # updates such as clearing after a failure).
        after_analysis(gr.on([image.upload, analyse_button.click], analyse, inputs, outputs, api_name="explain"))
        after_analysis(gr.on([tta.input, target.input, method.input], reanalyse, inputs, outputs,
                             api_visibility="private"))
        if example_set is not None:
            pick = example_set.click(lambda index: str(examples[index]), example_set, image, api_visibility="private",
                                     queue=False, show_progress="hidden")
            after_analysis(pick.then(analyse, inputs, outputs, api_visibility="private"))
        image.clear(cleared, None, outputs, api_visibility="private", queue=False, show_progress="hidden")
        # `.change` covers every way the threshold moves: dragging, arrow keys, the number box, the reset button.
        threshold.change(on_threshold, [session, threshold], threshold_outputs, api_visibility="private",
                         trigger_mode="always_last", show_progress="minimal")
        gr.on([], run_predict, [image, threshold, tta], [probs, decision, result_json], api_name="predict")
        batch_button.click(run_batch, [files, batch_threshold, batch_tta], [table, csv_file, batch_summary],
                           api_name="batch", concurrency_limit=1)
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=64)
    return demo


def launch_demo(demo: gr.Blocks, host: str | None = None, port: int | None = None, share: bool = False,
                allowed_paths: list[str] | None = None, **kwargs):
    """Launches with the app's limits; `host`/`port` None leave Gradio's defaults (and its GRADIO_SERVER_* env)."""
    return demo.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_FILE_SIZE,
                       allowed_paths=allowed_paths, **kwargs)


def load_or_exit(source: str | Path):
    """`load_classifier`, or a clear message and exit status 1 (no traceback) when there is no usable model."""
    if Path(source) == DEFAULT_MODEL and not DEFAULT_MODEL.is_dir():
        sys.exit(f"No model at {DEFAULT_MODEL} (the reference checkpoint is not there yet). {HOW_TO_GET_A_MODEL}")
    try:
        return load_classifier(source)
    except Exception as error:  # missing directory, unknown Hub id, offline, incompatible files
        sys.exit(f"Could not load a model from {source!s}: {type(error).__name__}: {error}\n{HOW_TO_GET_A_MODEL}")


def pick_examples(folder: str | Path, limit: int = MAX_EXAMPLES) -> list[Path]:
    """A handful of images spread over the (sorted, recursive) folder, so every class subfolder is likely sampled."""
    paths = find_images(folder)
    if not paths:
        raise SystemExit(f"--examples: no images found under {folder}")
    return paths[:: max(1, len(paths) // limit)][:limit]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model directory or Hub id (default: %(default)s)")
    parser.add_argument("--examples", type=Path, help="folder of example images (searched recursively)")
    parser.add_argument("--host", default=None, help="server name, e.g. 0.0.0.0 (default: Gradio's, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="server port (default: Gradio's, 7860)")
    parser.add_argument("--share", action="store_true", help="create a public Gradio share link")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    examples = pick_examples(args.examples) if args.examples else None
    model, processor, info = load_or_exit(args.model)
    demo = build_demo(model, processor, info, examples)
    launch_demo(demo, args.host, args.port, args.share,
                allowed_paths=[str(args.examples.resolve())] if args.examples else None)


if __name__ == "__main__":
    main()
