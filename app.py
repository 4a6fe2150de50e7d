"""Gradio demo of the ASFF-ResNet skin-lesion classifier: probabilities with a decision threshold, Grad-CAM, the
learned fusion weights, batch classification to CSV, and an HTTP API (/predict, /explain, /batch).

    python app.py [--model DIR_OR_HUB_ID] [--examples DIR] [--host 127.0.0.1] [--port 7860] [--share]

Only wiring lives here; the logic is in `modeling/explain.py`. The Hugging Face Space (`space/`) ships this file as
`demo.py` and calls the same `build_demo` and `launch_demo`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import tempfile
import time
from pathlib import Path

import gradio as gr

from modeling.explain import (
    CAM_METHODS,
    CAM_TARGETS,
    ModelInfo,
    decide,
    explain,
    find_images,
    load_classifier,
    load_image,
    predict,
    predict_batch,
    write_csv,
)

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
MAX_FILE_SIZE = "20mb"
MAX_BATCH_FILES = 200
CONCURRENCY_LIMIT = 2  # CPU: model forwards are serialised anyway (modeling.explain), this bounds memory
MAX_EXAMPLES = 8
logger = logging.getLogger(__name__)


def raw_upload(component: gr.Image) -> gr.Image:
    """Hands the handler the uploaded file's path undecoded: gr.Image's own decoding would fail on a bad file before
    the handler runs, with no useful message, while `modeling.explain.load_image` says what is wrong. (Overridden on
    the instance: a gr.Image subclass would make Gradio write a .pyi stub next to this file.)"""
    decode = component.preprocess

    def preprocess(payload):
        if payload is None or payload.path is None or (payload.url or "").startswith("data:"):
            return decode(payload)
        return str(payload.path)  # Gradio has already checked that the path is an upload in its cache

    component.preprocess = preprocess
    return component


def decision_label(component: gr.Label) -> gr.Label:
    """Lets the handler return `(label, {class: probability})`, so that the headline is the thresholded decision
    rather than the most probable class."""
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
        except ValueError as error:  # ImageLoadError and bad arguments: the message is for the user
            raise gr.Error(str(error), print_exception=False) from None
        except Exception:
            logger.exception("request failed")
            raise gr.Error("Internal error while processing the request; see the server log.") from None

    return wrapper


def _open(path: str):
    notes: list[str] = []
    image = load_image(path, notes)
    for note in notes:
        gr.Warning(note)
    return image


def _decision_markdown(probs: dict[str, float], label: str, threshold: float) -> str:
    labels = list(probs)
    if len(labels) != 2:
        return f"**Prediction: {label}**"
    positive = labels[1]
    sign = ">=" if probs[positive] >= threshold else "<"
    return f"**Prediction: {label}** (p({positive}) = {probs[positive]:.3f} {sign} threshold {threshold:.2f})"


def build_demo(model, processor, info: ModelInfo, examples: list[str | Path] | None = None) -> gr.Blocks:
    """The Blocks app for one loaded classifier (see `modeling.explain.load_classifier`)."""
    fusion_note = {
        "channel": "channel fusion (one stage3 weight per channel)",
        "spatial": "spatial fusion (one stage3 weight per pixel)",
        "none": "plain ResNet, no fusion",
        None: f"{info.model_type} (not an ASFF-ResNet)",
    }[info.fusion_mode]

    @_user_errors
    def run_predict(image_path, threshold, tta):
        if image_path is None:
            return None, "", ""
        start = time.perf_counter()
        probs = predict(model, processor, _open(image_path), tta=bool(tta))
        elapsed = (time.perf_counter() - start) * 1000
        label = info.id2label[decide(list(probs.values()), threshold)]
        timing = f"Inference time: **{elapsed:.0f} ms**{' (8 TTA views)' if tta else ''}, no CAM"
        return (label, probs), _decision_markdown(probs, label, threshold), timing

    @_user_errors
    def run_explain(image_path, threshold, tta, target, method):
        if image_path is None:
            return None, "", None, None, "", ""
        result = explain(model, processor, _open(image_path), target=target, method=method, threshold=threshold,
                         tta=bool(tta))
        timing = ", ".join(f"{k} {v:.0f}" for k, v in result.timing_ms.items() if k != "total")
        return (
            (result.label, result.probabilities),
            _decision_markdown(result.probabilities, result.label, result.threshold),
            result.cam_overlay,
            result.fusion_figure,
            result.fusion_message,
            f"Inference time: **{result.timing_ms['total']:.0f} ms** ({timing} ms); Grad-CAM of *{result.label}*",
        )

    @_user_errors
    def run_batch(image_paths, threshold, tta, progress=gr.Progress()):  # noqa: B008 (Gradio's injection idiom)
        if not image_paths:
            raise gr.Error("Upload one or more image files.")
        if len(image_paths) > MAX_BATCH_FILES:
            raise gr.Error(f"At most {MAX_BATCH_FILES} files per batch; got {len(image_paths)}.")
        done = [0]

        def step(n: int) -> None:
            done[0] += n
            progress((done[0], len(image_paths)), desc="Classifying", unit="images")

        rows = predict_batch(model, processor, image_paths, threshold=threshold, tta=bool(tta), progress=step)
        csv_path = write_csv(rows, Path(tempfile.mkdtemp(prefix="asff-batch-")) / "predictions.csv")
        table = {"headers": list(rows[0]), "data": [["" if v is None else v for v in row.values()] for row in rows]}
        return table, str(csv_path)

    with gr.Blocks(title="ASFF-ResNet skin-lesion classifier (research demo)", analytics_enabled=False) as demo:
        gr.Markdown(f"# ASFF-ResNet skin-lesion classifier\n{DISCLAIMER}")
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    image = raw_upload(gr.Image(label="Lesion image", type="filepath", sources=["upload", "clipboard"],
                                                  height=300, elem_id="lesion-image"))
                    threshold = gr.Slider(0.0, 1.0, value=info.decision_threshold, step=0.01,
                                          label=f"Decision threshold on p({info.id2label.get(1, 'class 1')})",
                                          info="Default: the threshold chosen on validation (model card), else 0.5")
                    tta = gr.Checkbox(False, label="Test-time augmentation (8 flips/rotations, averaged)")
                    with gr.Row():
                        target = gr.Radio([(v, k) for k, v in CAM_TARGETS.items()], value="fused",
                                          label="Grad-CAM target layer")
                        method = gr.Dropdown(list(CAM_METHODS), value="gradcam", label="CAM method")
                    explain_button = gr.Button("Analyse", variant="primary")
                with gr.Column():
                    probs = decision_label(gr.Label(label="Decision and class probabilities", elem_id="probabilities"))
                    decision = gr.Markdown(label="Decision")
                    timing = gr.Markdown(label="Inference time")
                    cam = gr.Image(label="Grad-CAM overlay (model input crop)", type="numpy", interactive=False,
                                   format="png", height=300, elem_id="cam")
            with gr.Row():
                fusion_plot = gr.Plot(label="Fusion weights", elem_id="fusion-plot")
                fusion_text = gr.Markdown(f"Model: {fusion_note}.", label="Fusion summary")
            if examples:
                gr.Examples([[str(p)] for p in examples], inputs=[image], label="Examples")
        with gr.Tab("Batch"):
            files = gr.File(file_count="multiple", label="Images", type="filepath")
            with gr.Row():
                batch_threshold = gr.Slider(0.0, 1.0, value=info.decision_threshold, step=0.01,
                                            label="Decision threshold")
                batch_tta = gr.Checkbox(False, label="Test-time augmentation")
            batch_button = gr.Button("Classify all", variant="primary")
            table = gr.Dataframe(label="Predictions (a file that cannot be read gets its error)", interactive=False)
            csv_file = gr.File(label="Download CSV")
        with gr.Tab("About"):
            gr.Markdown(DISCLAIMER)
            gr.Markdown(
                f"**Model:** `{info.source}` ({fusion_note}; {info.num_parameters / 1e6:.1f} M parameters; "
                f"input {info.image_size} px; default threshold {info.decision_threshold:.2f})."
            )
            gr.Markdown(info.card_text or "*No model card (README.md) came with this model.*")

        explain_triggers = [image.change, explain_button.click, target.input, method.input]
        gr.on(explain_triggers, run_explain, [image, threshold, tta, target, method],
              [probs, decision, cam, fusion_plot, fusion_text, timing], api_name="explain")
        gr.on([threshold.release, tta.input], run_predict, [image, threshold, tta], [probs, decision, timing],
              api_name="predict")
        batch_button.click(run_batch, [files, batch_threshold, batch_tta], [table, csv_file], api_name="batch",
                           concurrency_limit=1)
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
