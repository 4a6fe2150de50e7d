"""onnxruntime inference for saved models: where a model directory's ONNX graphs are, whether they belong to that model,
and running them in place of the torch model wherever no gradient is needed (probabilities, TTA, batches; Grad-CAM
stays with torch).

The layout is the one Hub repositories use for ONNX weights: `onnx/model.onnx` (float32) and
`onnx/model_quantized.onnx` (int8), written by `python -m modeling.export --onnx MODEL_DIR`. A float32 graph too large
to ship beside the weights is made on first use into a local cache instead (`cache_dir()`), keyed by the weights.

Every graph records in its metadata the labels, the input size and a fingerprint of the weights it was exported from;
a graph that does not match the model (other labels, other input size, other weights) is refused. The graph outputs
raw logits (and the OOD score and fusion weights when the model has them): calibration, the decision threshold and
the OOD threshold stay in `config.json`, so re-calibrating a model does not invalidate its ONNX files.

Importing this module does not import torch (the app predicts with it before torch is loaded): `OnnxClassifier.predict`
takes the processor's output as a numpy array and returns a `Prediction`; only `__call__` (which mimics the torch
model) and exporting need torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .decision import calibrated_probabilities_numpy, decision_threshold, temperature
from .prediction import MODEL_LOCK, Prediction, make_prediction, tta_views

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
# Backend name -> file name under onnx/. "auto" picks the fastest the directory has, in this order.
ONNX_FILES = {"onnx-int8": "model_quantized.onnx", "onnx": "model.onnx"}
BACKENDS = ("onnx-int8", "onnx", "torch")
AUTO = "auto"
INPUT_NAME = "pixel_values"
OUTPUT_NAMES = ("logits", "ood_score", "fusion_weights")
# Graphs of ASFF models also output the backbone's two stage maps: torch then runs only the layers above them
# (`forward_from_stages`) for Grad-CAM, whose gradients never reach the backbone (`modeling.explain`).
STAGE_OUTPUTS = ("stage_low", "stage_high")
METADATA_PREFIX = "asff."
WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.bin")
HOW_TO_EXPORT = "Make them with `python -m modeling.export --onnx {dir}`."
# The graph layout: 2 added the stage maps (`STAGE_OUTPUTS`). Cached graphs are keyed by it, so an older cache entry
# is made again rather than served without them.
GRAPH_FORMAT = "2"


class OnnxMismatchError(ValueError):
    """An ONNX file that does not belong to the model it sits beside (labels, input size or weights differ)."""


class OnnxUnavailableError(RuntimeError):
    """An ONNX backend was asked for and cannot be had (no file, onnxruntime not installed, a Hub id)."""


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


_FINGERPRINTS: dict[tuple, str] = {}


def weight_files(model_dir: str | Path) -> list[Path]:
    model_dir = Path(model_dir)
    for pattern in WEIGHT_FILE_PATTERNS:
        files = sorted(model_dir.glob(pattern))
        if files:
            return files
    return []


def weights_fingerprint(model_dir: str | Path) -> str | None:
    """sha256 over the directory's weight files (names and bytes); None when it has none. Cached per file state, so
    the app and the CLI hash a checkpoint once per process (about 0.1 s for ResNet-50's 66 MB)."""
    files = weight_files(model_dir)
    if not files:
        return None
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.name.encode() + b"\0")
            with f.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
        _FINGERPRINTS[key] = digest.hexdigest()
    return _FINGERPRINTS[key]


def cache_dir() -> Path:
    """Where float32 graphs made on first use go: $ASFF_ONNX_CACHE, else $XDG_CACHE_HOME/asff-resnet/onnx, else
    ~/.cache/asff-resnet/onnx."""
    if os.environ.get("ASFF_ONNX_CACHE"):
        return Path(os.environ["ASFF_ONNX_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "asff-resnet" / "onnx"


def cached_path(model_dir: str | Path, backend: str = "onnx") -> Path | None:
    """The cache's file for this model's weights (None when the directory has no weight files)."""
    fingerprint = weights_fingerprint(model_dir)
    return None if fingerprint is None else cache_dir() / f"{fingerprint[:16]}-f{GRAPH_FORMAT}" / ONNX_FILES[backend]


def onnx_candidates(model_dir: str | Path, backend: str) -> list[Path]:
    """The existing files that could serve `backend`: the directory's own, then the cache's."""
    own = Path(model_dir) / ONNX_DIR / ONNX_FILES[backend]
    cached = cached_path(model_dir, backend)
    return [p for p in (own, cached) if p is not None and p.is_file()]


def input_size(processor) -> int:
    """The square input size the processor produces (what the graph's fixed height and width must be)."""
    from .image_processing import processor_settings

    return int(processor_settings(processor)["image_size"])


def labels_of(config) -> dict[str, str]:
    return {str(int(k)): str(v) for k, v in config.id2label.items()}


def graph_metadata(config, image_size: int, fingerprint: str | None, precision: str,
                   extra: dict[str, Any] | None = None) -> dict[str, str]:
    """What an exported graph records about its model (strings, as ONNX metadata_props are)."""
    values = {"format": GRAPH_FORMAT, "model_type": config.model_type,
              "id2label": json.dumps(labels_of(config), sort_keys=True), "image_size": str(image_size),
              "weights_sha256": fingerprint or "", "precision": precision,
              **{k: str(v) for k, v in (extra or {}).items()}}
    return {METADATA_PREFIX + k: v for k, v in values.items()}


def mismatches(metadata: dict[str, str], input_shape: list, num_logits: Any, config, image_size: int,
               fingerprint: str | None) -> list[str]:
    """What differs between a graph (its metadata, input shape and logits width) and the model; empty if it fits."""
    meta = {k[len(METADATA_PREFIX):]: v for k, v in metadata.items() if k.startswith(METADATA_PREFIX)}
    if not meta:
        return ["it was not exported by modeling.export (no asff.* metadata)"]
    problems = []
    labels = labels_of(config)
    try:
        graph_labels = json.loads(meta.get("id2label", "{}"))
    except json.JSONDecodeError:
        graph_labels = None
    if graph_labels != labels:
        problems.append(f"labels {graph_labels} but the model has {labels}")
    if isinstance(num_logits, int) and num_logits != len(labels):
        problems.append(f"{num_logits} logits but the model has {len(labels)} labels")
    graph_size = meta.get("image_size")
    spatial = [d for d in input_shape[2:] if isinstance(d, int)]
    if graph_size != str(image_size) or any(d != image_size for d in spatial):
        problems.append(f"input size {graph_size or spatial} px but the model's processor gives {image_size} px")
    graph_weights = meta.get("weights_sha256") or None
    if fingerprint is not None and graph_weights != fingerprint:
        problems.append(f"exported from other weights (sha256 {str(graph_weights)[:12]}…, the model's are "
                        f"{fingerprint[:12]}…)")
    return problems


@dataclass
class OnnxOutput:
    """The graph's outputs as float32 torch tensors (None for those it does not have), named like the torch model's."""

    logits: Any
    ood_score: Any = None
    fusion_weights: Any = None
    stage_low: Any = None  # only when asked for (`stages=True`)
    stage_high: Any = None


def default_threads() -> int:
    """The CPUs this process may run on: what onnxruntime sessions use, with or without torch imported."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class OnnxClassifier:
    """An onnxruntime session for one model's graph, called like the torch model: `runner(pixel_values=x)` returns
    `.logits` (and `.ood_score`, `.fusion_weights`). `config` is the model's config (labels, temperature, thresholds),
    so it serves `modeling.inference` wherever the torch model would. Sessions are thread-safe."""

    def __init__(self, path: str | Path, config, image_size: int, fingerprint: str | None = None,
                 backend: str | None = None, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.config = config
        self.image_size = image_size
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT's optimiser notes are not for users
        options.intra_op_num_threads = threads or default_threads()
        # No busy-waiting between runs: idle workers would otherwise spin on the cores that torch needs next (Grad-CAM
        # right after an onnxruntime prediction in the app); measured here, it costs onnxruntime no speed.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        names = [o.name for o in outputs]
        problems = [] if [i.name for i in inputs] == [INPUT_NAME] and "logits" in names else [
            f"inputs {[i.name for i in inputs]} and outputs {names}, not {INPUT_NAME} -> logits"]
        logits_shape = outputs[names.index("logits")].shape if "logits" in names else []
        problems += mismatches(metadata, list(inputs[0].shape), logits_shape[-1] if logits_shape else None, config,
                               image_size, fingerprint)
        if problems:
            raise OnnxMismatchError(f"{self.path} does not match the model: " + "; ".join(problems)
                                    + ". Export it again: python -m modeling.export --onnx MODEL_DIR")
        self.metadata = {k[len(METADATA_PREFIX):]: v for k, v in metadata.items() if k.startswith(METADATA_PREFIX)}
        self.backend = backend or ("onnx-int8" if self.metadata.get("precision") == "int8" else "onnx")
        self.output_names = [n for n in names if n in OUTPUT_NAMES]
        self.stage_names = [n for n in STAGE_OUTPUTS if n in names]

    @property
    def name(self) -> str:
        return self.backend

    @property
    def serves_grad_cam(self) -> bool:
        """A float32 graph that outputs the stage maps: Grad-CAM can run torch above them (`modeling.explain`). An
        int8 graph's maps are quantised, so a CAM from them would not be the model's."""
        return len(self.stage_names) == len(STAGE_OUTPUTS) and self.metadata.get("precision") == "float32"

    def run(self, pixel_values: Any, stages: bool = False) -> dict[str, np.ndarray]:
        """The graph's outputs by name (pixel values as an array or a tensor); the stage maps too with `stages`
        (large: leave them out for batches)."""
        x = pixel_values.detach().cpu().numpy() if hasattr(pixel_values, "detach") else pixel_values
        names = self.output_names + (self.stage_names if stages else [])
        values = self.session.run(names, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
        return dict(zip(names, values, strict=True))

    def __call__(self, pixel_values: Any, stages: bool = False) -> OnnxOutput:
        import torch

        return OnnxOutput(**{k: torch.from_numpy(np.asarray(v, np.float32))
                             for k, v in self.run(pixel_values, stages).items()})

    @property
    def ood_threshold(self) -> float | None:
        """The config's OOD threshold when the graph outputs an OOD score (the model has a scorer), else None."""
        value = getattr(self.config, "ood_threshold", None)
        return float(value) if "ood_score" in self.output_names and value is not None else None

    def predict(self, pixel_values: np.ndarray, tta: bool = False, threshold: float | None = None) -> Prediction:
        """One image's `Prediction` from its processed (1, C, H, W) pixels, decided by the config's rule: what
        `modeling.inference.predict` returns for this backend, computed without torch."""
        threshold = decision_threshold(self.config) if threshold is None else float(threshold)
        inputs = tta_views(pixel_values) if tta else pixel_values
        with MODEL_LOCK:
            outputs = self.run(inputs)
        probs = calibrated_probabilities_numpy(outputs["logits"], temperature(self.config))
        score = outputs.get("ood_score")
        return make_prediction(probs.mean(0), self.config.id2label, threshold, probs if tta else None,
                               None if score is None else float(np.ravel(score)[0]), self.ood_threshold)

    def __repr__(self) -> str:
        return f"OnnxClassifier({self.backend}, {self.path})"


def load_backend(source: str | Path, model: Any, processor, backend: str = AUTO) -> OnnxClassifier | None:
    """The onnxruntime runner for `backend` of a loaded model (None: predict with torch).

    `auto`: the fastest the model directory has (int8, then float32 in the directory or the cache); without any, or
    without onnxruntime, torch with one log line; a file that does not match the model is skipped with a warning
    saying why. `onnx-int8` / `onnx`: that one or an error (`OnnxUnavailableError`, `OnnxMismatchError`); a float32
    graph missing from the directory and the cache is exported into the cache first (once, verified against torch).
    `torch`: None. Hub ids (not a local directory) are served with torch."""
    if backend not in (AUTO, *BACKENDS):
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join((AUTO, *BACKENDS))}")
    if backend == "torch":
        return None
    model_dir = Path(source)
    if not model_dir.is_dir():
        return _unavailable(backend, f"{source} is not a local model directory (ONNX files are looked up in local "
                                     "directories only)")
    if not onnxruntime_available():
        return _unavailable(backend, "onnxruntime is not installed (pip install onnxruntime)")
    size = input_size(processor)
    runner = find_backend(model_dir, model.config, size, backend)
    if runner is not None:
        return runner
    if backend == "onnx":
        from .onnx_export import export_fp32_to_cache

        path = export_fp32_to_cache(model_dir, model, processor)
        return OnnxClassifier(path, model.config, size, weights_fingerprint(model_dir), backend="onnx")
    files = ", ".join(f"{ONNX_DIR}/{ONNX_FILES[b]}" for b in ONNX_FILES if backend in (AUTO, b))
    return _unavailable(backend, f"{model_dir} has no usable ONNX file ({files}). "
                                 + HOW_TO_EXPORT.format(dir=model_dir))


def find_backend(model_dir: str | Path, config: Any, image_size: int, backend: str = AUTO) -> OnnxClassifier | None:
    """The existing graph that serves `backend` (`auto`: int8, then float32) for a model directory, or None; needs no
    torch (`config` may be `modeling.prediction.read_config`'s). A file that does not match the model is an error
    for an explicit backend, and skipped with a warning for `auto`."""
    model_dir = Path(model_dir)
    fingerprint = weights_fingerprint(model_dir)
    for name in [b for b in ONNX_FILES if backend in (AUTO, b)]:
        for path in onnx_candidates(model_dir, name):
            try:
                runner = OnnxClassifier(path, config, image_size, fingerprint, backend=name)
            except OnnxMismatchError as error:
                if backend != AUTO:
                    raise
                if str(error) not in _SKIPPED:  # once per process: the app looks before and after loading torch
                    _SKIPPED.add(str(error))
                    logger.warning("%s; skipped.", error)
                continue
            logger.info("%s: predictions with onnxruntime (%s, %s)", model_dir.name, name, path)
            return runner
    return None


_SKIPPED: set[str] = set()


def grad_cam_backend(source: str | Path, model: Any, processor,
                     runner: OnnxClassifier | None = None) -> OnnxClassifier | None:
    """The graph Grad-CAM can run on (`OnnxClassifier.serves_grad_cam`): `runner` itself when it is one, else the
    model's float32 graph in its directory or the cache; None (Grad-CAM runs the whole torch model) when there is none
    (or `source` is None: the user asked for torch). Never exports: a faster CAM does not justify a minute-long export
    at request time."""
    if source is None:
        return runner if runner is not None and runner.serves_grad_cam else None
    return find_grad_cam_graph(source, model.config, input_size(processor), runner)


def find_grad_cam_graph(source: str | Path, config: Any, image_size: int,
                        runner: OnnxClassifier | None = None) -> OnnxClassifier | None:
    """`grad_cam_backend` from a model directory's files, without torch (`config` may be `read_config`'s)."""
    if runner is not None and runner.serves_grad_cam:
        return runner
    if not Path(source).is_dir() or not onnxruntime_available():
        return None
    fingerprint = weights_fingerprint(source)
    for path in onnx_candidates(source, "onnx"):
        try:
            candidate = OnnxClassifier(path, config, image_size, fingerprint, backend="onnx")
        except OnnxMismatchError:
            continue
        if candidate.serves_grad_cam:
            logger.info("%s: Grad-CAM above the stage maps of %s", Path(source).name, path)
            return candidate
    return None


def _unavailable(backend: str, reason: str) -> None:
    if backend != AUTO:
        raise OnnxUnavailableError(f"backend {backend}: {reason}")
    logger.info("%s; predicting with torch.", reason.rstrip("."))
    return None


def backend_name(runner: OnnxClassifier | None) -> str:
    """What the CSV and the app call the backend that produced a prediction."""
    return "torch" if runner is None else runner.backend


__all__ = [
    "AUTO",
    "BACKENDS",
    "ONNX_DIR",
    "ONNX_FILES",
    "STAGE_OUTPUTS",
    "OnnxClassifier",
    "OnnxMismatchError",
    "OnnxOutput",
    "OnnxUnavailableError",
    "backend_name",
    "cache_dir",
    "cached_path",
    "default_threads",
    "find_backend",
    "find_grad_cam_graph",
    "grad_cam_backend",
    "graph_metadata",
    "input_size",
    "load_backend",
    "mismatches",
    "onnx_candidates",
    "onnxruntime_available",
    "weights_fingerprint",
]
