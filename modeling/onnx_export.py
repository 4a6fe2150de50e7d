"""ONNX export of a saved model, verified as it runs: `python -m modeling.export --onnx MODEL_DIR [--dataset FOLDER]`.

Writes, in the layout Hub repositories use for ONNX weights, `MODEL_DIR/onnx/model.onnx` (float32) and
`MODEL_DIR/onnx/model_quantized.onnx` (int8), plus `onnx/export_report.json` and a line in the model card. The graph
takes `pixel_values` (batch, 3, S, S) with a dynamic batch axis and the image processor's input size S, and returns
`logits`, and `ood_score` and `fusion_weights` when the model has them: both are computed anyway on the way to the
logits (the OOD score is one 1024x1024 quadratic form per image, well under 0.1 % of ResNet-50's cost), so exposing
them costs nothing and makes the file usable on its own. Calibration (temperature), the decision threshold and the
OOD threshold are not in the graph: they are read from `config.json`, as for torch (`modeling.decision`).

Checks, each one failing the export: float32 probabilities within 1e-4 of PyTorch's on real images (`--dataset`; else
generated ones); int8 ROC AUC within 0.005 and accuracy within 0.01 of float32 on a labelled folder (its test split,
else validation, else all of it), and the same OOD flag as float32 on 98 % of its images, when one is given.

int8 is static quantisation (QDQ, per-channel int8 weights, uint8 activations, ranges calibrated on 64 training
images), chosen by measurement on the reference ResNet-50 (2 AVX2 cores, the 660 test images): static runs ~1.8x
float32's throughput (benchmarks/cpu_inference.py) with ROC AUC 0.937 vs 0.936 and the same accuracy; dynamic
quantisation (int8 weights, activations quantised on the fly) turns every convolution into ConvInteger, which
onnxruntime runs ~3x *slower* than float32 on this CPU (4.7 vs 12.9 images/s), so it is not worth it for a CNN
(`--quantization dynamic` remains, e.g. for a model dominated by matrix products; `--compare-quantization` measures
both). The fusion module, the OOD scorer and the features it reads stay float32 (`float_nodes` says why).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .decision import calibrated_probabilities, decide_batch, decision_threshold, temperature
from .onnx_runtime import (
    INPUT_NAME,
    ONNX_DIR,
    ONNX_FILES,
    OUTPUT_NAMES,
    STAGE_OUTPUTS,
    OnnxClassifier,
    cached_path,
    graph_metadata,
    input_size,
    labels_of,
    weights_fingerprint,
)

logger = logging.getLogger(__name__)

OPSET = 18
REPORT_FILE = "export_report.json"
QUANTIZATION_METHODS = ("static", "dynamic")
COMPARE_IMAGES = 64
FLOAT_MODULE = "asff_resnet.fusion."
FP32_TOLERANCE = 1e-4  # max |p_onnx - p_torch| over the verification images
INT8_ROC_AUC_TOLERANCE = 0.005
INT8_ACCURACY_TOLERANCE = 0.01
INT8_OOD_AGREEMENT = 0.98  # share of real images whose OOD flag int8 must keep
CARD_BEGIN, CARD_END = "<!-- onnx-export -->", "<!-- /onnx-export -->"


class ExportVerificationError(RuntimeError):
    """An exported graph failed its check against PyTorch (float32) or float32 (int8)."""


class OnnxGraph(nn.Module):
    """What the ONNX graph computes: the classifier's outputs named in `outputs`, as a tuple (torch users' forward is
    untouched: this only wraps it). With `STAGE_OUTPUTS` among them, the backbone's two stage maps too, from the same
    pass: the classifier's outputs are then computed from those maps (`forward_from_stages`)."""

    def __init__(self, model: nn.Module, outputs: Sequence[str]):
        super().__init__()
        self.model, self.outputs = model, list(outputs)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values = {}
        if any(name in STAGE_OUTPUTS for name in self.outputs):
            low, high = self.model.asff_resnet.backbone(pixel_values, return_dict=True).feature_maps
            output = self.model.forward_from_stages(low, high)
            values = dict(zip(STAGE_OUTPUTS, (low, high), strict=True))
        else:
            output = self.model(pixel_values=pixel_values, return_dict=True)
        return tuple(values[name] if name in values else getattr(output, name) for name in self.outputs)


def graph_outputs(model: nn.Module, image_size: int) -> list[str]:
    """The outputs the graph gets: `logits`, and `ood_score` / `fusion_weights` when the model returns them; the stage
    maps of ASFF models (whose code can classify from them: `forward_from_stages`)."""
    with torch.no_grad():
        output = model(pixel_values=torch.zeros(1, 3, image_size, image_size), return_dict=True)
    names = [name for name in OUTPUT_NAMES if isinstance(getattr(output, name, None), torch.Tensor)]
    stages = hasattr(model, "forward_from_stages") and hasattr(model, "asff_resnet")
    return names + list(STAGE_OUTPUTS) if stages else names


def save_with_metadata(model_proto, path: Path, metadata: dict[str, str]) -> Path:
    import onnx

    del model_proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        model_proto.metadata_props.add(key=key, value=value)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model_proto, str(path))  # one file: no external data below protobuf's 2 GB
    return path


def export_fp32(model: nn.Module, path: str | Path, image_size: int, metadata: dict[str, str]) -> Path:
    """torch.onnx.export (dynamo) of `OnnxGraph`, one file with `metadata`; the batch axis is dynamic."""
    import onnx

    path = Path(path)
    model = model.float().eval()
    outputs = graph_outputs(model, image_size)
    dummy = torch.zeros(2, 3, image_size, image_size)
    with tempfile.TemporaryDirectory() as folder, quiet_exporter():
        staging = Path(folder) / "model.onnx"
        torch.onnx.export(OnnxGraph(model, outputs).eval(), (dummy,), str(staging), input_names=[INPUT_NAME],
                          output_names=outputs, opset_version=OPSET, dynamo=True, external_data=False,
                          dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch", min=1)}}, verbose=False)
        proto = onnx.load(str(staging))
    metadata = {**metadata, "asff.outputs": json.dumps(outputs), "asff.opset": str(OPSET)}
    return save_with_metadata(proto, path, metadata)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter's and optimiser's INFO lines (dozens per export) are for their developers: warnings only."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def float_nodes(model_proto) -> list[str]:
    """Nodes that quantisation leaves in float32: the OOD scorer's (those only `ood_score` depends on), the other
    readers of the features it reads (the head's first layer), and the fusion module, from its own layers (their
    weights' names contain `asff_resnet.fusion.`) down to those features; without an OOD scorer, the fusion's layers.

    Why: the scorer weighs the features' small directions heavily (its precision matrix), and the channel fusion's
    softmax over 1024 channels is sharp. With the fusion in int8 the reference model's OOD scores moved by a median
    factor of 6 and every test image was flagged; with it in float32 they move by a few per cent and the flags agree
    (the fusion is ~3 % of the FLOPs)."""
    graph = model_proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    only = set(ood_only_nodes(model_proto))
    inside = [node for node in graph.node if node.name in only]
    produced_inside = {out for node in inside for out in node.output}
    read = {name for node in inside for name in node.input if name and name not in produced_inside}
    readers = {node.name for node in graph.node if node.name not in only and read & set(node.input)}
    initializers = {i.name for i in graph.initializer}
    fusion = {node.name for node in graph.node
              if any(name in initializers and FLOAT_MODULE in name for name in node.input)}
    if read and fusion:  # everything on the way from the fusion's layers to the features the scorer reads
        below: set[str] = set()
        stack = [name for name in read if name in producers]
        while stack:
            node = producers[stack.pop()]
            if node.name not in below:
                below.add(node.name)
                stack.extend(i for i in node.input if i in producers)
        downstream, frontier = set(fusion), list(fusion)
        consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        by_name = {node.name: node for node in graph.node}
        while frontier:
            for out in by_name[frontier.pop()].output:
                for node in consumers.get(out, []):
                    if node.name not in downstream:
                        downstream.add(node.name)
                        frontier.append(node.name)
        fusion |= downstream & below
    return sorted(only | readers | fusion)


def ood_only_nodes(model_proto) -> list[str]:
    """Nodes that only the `ood_score` output depends on (the Mahalanobis scorer)."""
    graph = model_proto.graph
    producers = {out: node for node in graph.node for out in node.output}

    def ancestors(output: str) -> set[str]:
        seen, stack = set(), [output]
        while stack:
            node = producers.get(stack.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                stack.extend(node.input)
        return seen

    outputs = [o.name for o in graph.output]
    if "ood_score" not in outputs:
        return []
    shared = set().union(*(ancestors(o) for o in outputs if o != "ood_score"))
    return sorted(ancestors("ood_score") - shared)


class _Batches:
    """onnxruntime's CalibrationDataReader over a list of (N, 3, S, S) arrays."""

    def __init__(self, batches: Sequence[np.ndarray]):
        self._iter = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:  # pragma: no cover (the calibrator reads once)
        raise NotImplementedError


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: Sequence[np.ndarray],
                  method: str = "static", metadata: dict[str, str] | None = None) -> Path:
    """int8 graph from the float32 one: `static` (QDQ, calibrated on `calibration` batches) or `dynamic`; the OOD
    scorer's nodes stay float32. Metadata as the float32 graph's, with precision int8."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as folder:
        prepared, quantized = Path(folder) / "prepared.onnx", Path(folder) / "quantized.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        exclude = float_nodes(onnx.load(str(prepared), load_external_data=False))
        if method == "static":
            quantize_static(str(prepared), str(quantized), _Batches(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax)
        elif method == "dynamic":
            quantize_dynamic(str(prepared), str(quantized), weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
        else:
            raise ValueError(f"quantization must be static or dynamic, got {method!r}")
        proto = onnx.load(str(quantized))
    if metadata is None:
        metadata = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
    metadata = {**metadata, "asff.precision": "int8", "asff.quantization": method}
    return save_with_metadata(proto, out_path, metadata)


# --------------------------------------------------------------------------- images for calibration and checks


def _split_dir(dataset: Path, names: Sequence[str]) -> Path | None:
    return next((dataset / n for n in names if (dataset / n).is_dir()), None)


def calibration_images(dataset: str | Path | None, count: int, seed: int = 0) -> list[Path]:
    """A seeded sample of training images (the `train` split, else the whole folder; never test)."""
    from .image_utils import find_images

    if dataset is None:
        return []
    dataset = Path(dataset)
    paths = find_images(_split_dir(dataset, ["train"]) or dataset)
    rng = np.random.default_rng(seed)
    return [paths[i] for i in sorted(rng.choice(len(paths), min(count, len(paths)), replace=False))] if paths else []


def evaluation_images(dataset: str | Path | None, labels: Sequence[str]) -> tuple[list[Path], list[int | None]]:
    """The labelled evaluation images: the test split, else validation, else the folder; the label is the parent
    folder's name when it is one of the model's labels."""
    from .image_utils import find_images

    if dataset is None:
        return [], []
    dataset = Path(dataset)
    paths = find_images(_split_dir(dataset, ["test", "validation"]) or dataset)
    index = {label: i for i, label in enumerate(labels)}
    return paths, [index.get(p.parent.name) for p in paths]


def synthetic_pixels(processor, count: int, seed: int = 0) -> np.ndarray:
    from .synthetic import lesion_image

    rng = np.random.default_rng(seed)
    images = [lesion_image(i % 2, rng, 96) for i in range(count)]
    return processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32)


def preprocess(processor, paths: Sequence[Path], batch: int = 32) -> np.ndarray:
    from .image_utils import load_image

    chunks = []
    for start in range(0, len(paths), batch):
        images = [load_image(p) for p in paths[start:start + batch]]
        chunks.append(processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32))
    return np.concatenate(chunks) if chunks else np.zeros((0, 3, 1, 1), np.float32)


def batches(x: np.ndarray, size: int = 16) -> Iterator[np.ndarray]:
    for start in range(0, len(x), size):
        yield x[start:start + size]


def torch_outputs(model: nn.Module, x: np.ndarray) -> dict[str, np.ndarray]:
    outs: dict[str, list] = {}
    with torch.no_grad():
        for chunk in batches(x):
            output = model(pixel_values=torch.from_numpy(chunk), return_dict=True)
            for name in OUTPUT_NAMES:
                value = getattr(output, name, None)
                if isinstance(value, torch.Tensor):
                    outs.setdefault(name, []).append(value.float().numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def onnx_outputs(runner: OnnxClassifier, x: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
    """All outputs over `x` in batches of 16, and images per second."""
    start, outs = time.perf_counter(), {}
    for chunk in batches(x):
        for name, value in runner.run(chunk).items():
            outs.setdefault(name, []).append(value)
    seconds = time.perf_counter() - start
    return {k: np.concatenate(v) for k, v in outs.items()}, len(x) / seconds if seconds > 0 else float("nan")


def compare(config, reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, Any]:
    """max |Δp| (calibrated), the share of equal decisions, and for the OOD score its max |Δ| and flag agreement."""
    t, threshold = temperature(config), decision_threshold(config)
    p_ref = calibrated_probabilities(reference["logits"], t).numpy()
    p_other = calibrated_probabilities(other["logits"], t).numpy()
    result = {"images": len(p_ref), "max_abs_diff_probability": float(np.abs(p_ref - p_other).max()),
              "decision_agreement": float((decide_batch(p_ref, threshold) == decide_batch(p_other, threshold)).mean())}
    if "ood_score" in reference and "ood_score" in other:
        result["max_abs_diff_ood_score"] = float(np.abs(reference["ood_score"] - other["ood_score"]).max())
        ood_threshold = getattr(config, "ood_threshold", None)
        if ood_threshold is not None:
            flags = (reference["ood_score"] > ood_threshold) == (other["ood_score"] > ood_threshold)
            result["ood_flag_agreement"] = float(flags.mean())
    return result


def labelled_metrics(config, outputs: dict[str, np.ndarray], labels: Sequence[int | None]) -> dict[str, Any] | None:
    """Accuracy at the config's threshold and (binary) ROC AUC over the images with a label; None without both
    classes."""
    from sklearn.metrics import roc_auc_score

    keep = np.array([label is not None for label in labels])
    if keep.sum() == 0:
        return None
    y = np.array([label for label in labels if label is not None])
    probs = calibrated_probabilities(outputs["logits"][keep], temperature(config)).numpy()
    metrics = {"images": int(keep.sum()),
               "accuracy": float((decide_batch(probs, decision_threshold(config)) == y).mean())}
    if probs.shape[1] == 2 and len(set(y.tolist())) == 2:
        metrics["roc_auc"] = float(roc_auc_score(y, probs[:, 1]))
    return metrics


# --------------------------------------------------------------------------- the export


def export_fp32_to_cache(model_dir: str | Path, model: nn.Module, processor) -> Path:
    """The float32 graph made on first use into the local cache (`onnx_runtime.cache_dir()`), checked against torch on
    generated images (max |Δp| <= 1e-4)."""
    path = cached_path(model_dir)
    if path is None:
        raise ValueError(f"{model_dir} has no weight files to export")
    size = input_size(processor)
    logger.info("Exporting %s to ONNX (float32) into the cache %s, once ...", Path(model_dir).name, path)
    staging = path.with_name(path.name + ".partial")
    export_fp32(model, staging, size, graph_metadata(model.config, size, weights_fingerprint(model_dir), "float32"))
    runner = OnnxClassifier(staging, model.config, size, weights_fingerprint(model_dir))
    x = synthetic_pixels(processor, 4)
    check = compare(model.config, torch_outputs(model, x), onnx_outputs(runner, x)[0])
    if check["max_abs_diff_probability"] > FP32_TOLERANCE:
        staging.unlink()
        raise ExportVerificationError(f"the float32 graph's probabilities differ from torch by "
                                      f"{check['max_abs_diff_probability']:.2e} (> {FP32_TOLERANCE})")
    staging.replace(path)
    return path


def export_onnx(
    model_dir: str | Path,
    dataset: str | Path | None = None,
    fp32: str = "dir",
    quantization: str = "static",
    calibration_count: int = 64,
    verify_count: int = 64,
    compare_quantization: bool = False,
    update_card: bool = True,
) -> dict[str, Any]:
    """Exports, verifies and reports (see the module docstring). `fp32`: "dir" keeps `onnx/model.onnx` in the model
    directory, "cache" puts it in the local cache instead (for checkpoints whose float32 graph is too large to
    commit). `quantization`: "static", "dynamic", or "none" (float32 only). `verify_count`: images compared with
    torch (0: all the evaluation images). Raises
    `ExportVerificationError` when a check fails (the failing file is removed; the report is still written)."""
    import onnxruntime

    from .inference import load_classifier

    model_dir = Path(model_dir)
    if fp32 not in ("dir", "cache"):
        raise ValueError(f"fp32 must be 'dir' or 'cache', got {fp32!r}")
    if quantization not in (*QUANTIZATION_METHODS, "none") or (quantization == "none" and compare_quantization):
        raise ValueError(f"quantization must be one of {QUANTIZATION_METHODS} or 'none' (then without "
                         f"compare_quantization), got {quantization!r}")
    model, processor, info = load_classifier(model_dir)
    config, size, fingerprint = model.config, input_size(processor), weights_fingerprint(model_dir)
    labels = list(labels_of(config).values())
    out_dir = model_dir / ONNX_DIR
    out_dir.mkdir(exist_ok=True)
    fp32_path = model_dir / ONNX_DIR / ONNX_FILES["onnx"] if fp32 == "dir" else cached_path(model_dir)
    int8_path = out_dir / ONNX_FILES["onnx-int8"]
    report: dict[str, Any] = {
        "model": info.name, "model_type": config.model_type, "image_size": size, "labels": labels, "opset": OPSET,
        "weights_sha256": fingerprint, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "dataset": None if dataset is None else Path(dataset).name,
    }

    start = time.perf_counter()
    metadata = graph_metadata(config, size, fingerprint, "float32")
    export_fp32(model, fp32_path, size, metadata)
    fp32_runner = OnnxClassifier(fp32_path, config, size, fingerprint)
    report["outputs"] = fp32_runner.output_names + fp32_runner.stage_names
    report["export_seconds"] = round(time.perf_counter() - start, 1)

    eval_paths, eval_labels = evaluation_images(dataset, labels)
    if eval_paths:
        x_eval, source = preprocess(processor, eval_paths), f"{len(eval_paths)} images of {Path(dataset).name}"
    else:
        x_eval, eval_labels, source = synthetic_pixels(processor, 32), [None] * 32, "32 generated images"
    verify = slice(None) if verify_count <= 0 else slice(0, verify_count)
    fp32_out, fp32_speed = onnx_outputs(fp32_runner, x_eval)
    torch_out = torch_outputs(model, x_eval[verify])
    report["fp32"] = {
        "file": _where(fp32_path, model_dir), "bytes": fp32_path.stat().st_size, "images_per_second": fp32_speed,
        "vs_torch": {"source": source, **compare(config, torch_out, {k: v[verify] for k, v in fp32_out.items()})},
        "metrics": labelled_metrics(config, fp32_out, eval_labels),
    }
    failure = None
    if report["fp32"]["vs_torch"]["max_abs_diff_probability"] > FP32_TOLERANCE:
        difference = report["fp32"]["vs_torch"]["max_abs_diff_probability"]
        failure = f"float32 probabilities differ from torch by {difference:.2e} (> {FP32_TOLERANCE})"

    if quantization == "none":  # float32 only: e.g. a model whose int8 graph fails its check (the report says so)
        report["int8"], report["verified"], report["failure"] = None, failure is None, failure
        (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        if failure is not None:
            fp32_path.unlink(missing_ok=True)
            raise ExportVerificationError(f"{model_dir}: {failure}; nothing kept (report: {out_dir / REPORT_FILE})")
        if update_card and (model_dir / "README.md").is_file():
            write_card_section(model_dir / "README.md", card_line(report))
        return report

    calibration_paths = calibration_images(dataset, calibration_count)
    x_calibration = (preprocess(processor, calibration_paths) if calibration_paths
                     else synthetic_pixels(processor, calibration_count, seed=1))
    report["calibration_images"] = (f"{len(calibration_paths)} training images of {Path(dataset).name}"
                                    if calibration_paths else f"{calibration_count} generated images")
    # The other method (with compare_quantization) is measured on the first COMPARE_IMAGES images only: dynamic
    # quantisation of a CNN runs at ~1 image/s here.
    methods = [quantization] + ([m for m in QUANTIZATION_METHODS if m != quantization] if compare_quantization else [])
    candidates = {}
    with tempfile.TemporaryDirectory() as folder:
        for method in methods:
            start = time.perf_counter()
            path = Path(folder) / f"{method}.onnx"
            quantize_int8(fp32_path, path, list(batches(x_calibration, 8)), method)
            seconds = time.perf_counter() - start
            runner = OnnxClassifier(path, config, size, fingerprint)
            subset = slice(None) if method == quantization else slice(0, COMPARE_IMAGES)
            out, speed = onnx_outputs(runner, x_eval[subset])
            candidates[method] = {
                "quantize_seconds": round(seconds, 1), "bytes": path.stat().st_size, "images_per_second": speed,
                "vs_fp32": compare(config, {k: v[subset] for k, v in fp32_out.items()}, out),
                "metrics": labelled_metrics(config, out, eval_labels[subset])}
        shutil.move(str(Path(folder) / f"{quantization}.onnx"), int8_path)
    report["int8"] = {"file": _where(int8_path, model_dir), "quantization": quantization, **candidates[quantization]}
    if compare_quantization:
        report["int8_alternatives"] = {m: c for m, c in candidates.items() if m != quantization}
    chosen = candidates[quantization]
    if failure is None:  # the OOD flag is checked on real images only: generated ones sit anywhere around it
        failure = int8_failure(report["fp32"]["metrics"], chosen["metrics"],
                               chosen["vs_fp32"].get("ood_flag_agreement") if eval_paths else None)
    report["verified"] = failure is None
    report["failure"] = failure
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    if failure is not None:
        int8_path.unlink(missing_ok=True)
        kept = "nothing kept"
        if "float32" in failure:
            fp32_path.unlink(missing_ok=True)
        else:
            kept = f"the float32 graph passed its check and is kept ({_where(fp32_path, model_dir)})"
        raise ExportVerificationError(f"{model_dir}: {failure}; the int8 graph is not written, {kept} "
                                      f"(report: {out_dir / REPORT_FILE})")
    if update_card and (model_dir / "README.md").is_file():
        write_card_section(model_dir / "README.md", card_line(report))
    return report


def int8_failure(fp32: dict | None, int8: dict | None, ood_flag_agreement: float | None = None) -> str | None:
    """Why the int8 graph fails its check against float32: ROC AUC or accuracy on labelled images, the OOD flag on real
    images (`ood_flag_agreement`, None: not checked). None: it passes."""
    if ood_flag_agreement is not None and ood_flag_agreement < INT8_OOD_AGREEMENT:
        return (f"int8 keeps the float32 OOD flag on {ood_flag_agreement:.1%} of the images "
                f"(< {INT8_OOD_AGREEMENT:.0%})")
    if not fp32 or not int8:
        return None
    if "roc_auc" in fp32 and abs(int8["roc_auc"] - fp32["roc_auc"]) > INT8_ROC_AUC_TOLERANCE:
        return f"int8 ROC AUC {int8['roc_auc']:.4f} vs float32 {fp32['roc_auc']:.4f} (> {INT8_ROC_AUC_TOLERANCE})"
    if abs(int8["accuracy"] - fp32["accuracy"]) > INT8_ACCURACY_TOLERANCE:
        return f"int8 accuracy {int8['accuracy']:.4f} vs float32 {fp32['accuracy']:.4f} (> {INT8_ACCURACY_TOLERANCE})"
    return None


def _where(path: Path, model_dir: Path) -> str:
    try:
        return path.relative_to(model_dir).as_posix()
    except ValueError:
        return "local cache (made on first use; too large to ship)"


def card_line(report: dict[str, Any]) -> str:
    fp32, int8 = report["fp32"], report["int8"]
    line = (f"ONNX (opset {report['opset']}, `{ONNX_DIR}/`): float32 `{ONNX_FILES['onnx']}` "
            f"({'shipped' if fp32['file'].startswith(ONNX_DIR) else 'made on first use into a local cache'}; "
            f"max |Δp| vs PyTorch {fp32['vs_torch']['max_abs_diff_probability']:.1e} on "
            f"{fp32['vs_torch']['images']} {'real' if report['dataset'] else 'generated'} images)")
    if int8 is None:
        return line + f", no int8 graph. Details: `{ONNX_DIR}/{REPORT_FILE}`."
    line += f" and int8 `{ONNX_FILES['onnx-int8']}` ({int8['quantization']} quantisation, {int8['bytes'] / 1e6:.0f} MB"
    if fp32["metrics"] and int8["metrics"] and "roc_auc" in fp32["metrics"]:
        line += (f"; on {int8['metrics']['images']} test images ROC AUC {int8['metrics']['roc_auc']:.4f} vs float32 "
                 f"{fp32['metrics']['roc_auc']:.4f}, accuracy {int8['metrics']['accuracy']:.4f} vs "
                 f"{fp32['metrics']['accuracy']:.4f}, the same decision on "
                 f"{int8['vs_fp32']['decision_agreement']:.1%}")
        if "ood_flag_agreement" in int8["vs_fp32"]:
            line += f" and the same OOD flag on {int8['vs_fp32']['ood_flag_agreement']:.1%}"
    return line + f"). Details: `{ONNX_DIR}/{REPORT_FILE}`."


def write_card_section(card_path: Path, line: str) -> None:
    """Puts `line` in the card between the export's markers (replacing an earlier one), as its own section."""
    text = card_path.read_text()
    block = f"{CARD_BEGIN}\n## ONNX\n\n{textwrap.fill(line, 116, break_on_hyphens=False)}\n{CARD_END}"
    if CARD_BEGIN in text and CARD_END in text:
        head, rest = text.split(CARD_BEGIN, 1)
        text = head + block + rest.split(CARD_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    card_path.write_text(text)


__all__ = [
    "FP32_TOLERANCE",
    "INT8_ACCURACY_TOLERANCE",
    "INT8_ROC_AUC_TOLERANCE",
    "OPSET",
    "ExportVerificationError",
    "OnnxGraph",
    "export_fp32",
    "export_fp32_to_cache",
    "export_onnx",
    "graph_outputs",
    "float_nodes",
    "ood_only_nodes",
    "quantize_int8",
]
