"""Serving models by name from one process, for the app (`app.py`) and the Space: each model's loaded parts (the
torch model for Grad-CAM and the fusion weights, its processor and info, the onnxruntime graphs that serve its
predictions and Grad-CAM's backbone) and a registry that loads each on first use and keeps it.

Torch-free at import (`app.TORCH_FREE_MODULES`): `start_without_torch` serves a model directory's predictions from
its files and ONNX graph alone while torch loads in the background; torch is imported only when a model's torch
side is loaded. Errors a user can cause (an unknown name, a directory that does not load) are `ServingError`s, whose
message is for the user."""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .image_processing_numpy import NumpyImageProcessor
from .onnx_runtime import AUTO, OnnxClassifier, backend_name, find_backend, find_grad_cam_graph, onnxruntime_available
from .prediction import ModelInfo, Prediction, model_name, read_config, read_model_info

logger = logging.getLogger(__name__)


class ServingError(Exception):
    """A model cannot be served; the message says which and why, for the user."""


class UnknownModelError(ServingError, KeyError):
    """No model of that name is offered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ModelLoadError(ServingError, RuntimeError):
    """The model's directory or Hub repository did not load."""


def model_choices(models_dir: str | Path | None, default: str | Path) -> dict[str, str]:
    """{name shown: source} for every model directory (a subfolder with a config.json) under `models_dir`, sorted, and
    the default model (a directory anywhere, or a Hub id), which keeps its own name."""
    choices = {}
    if models_dir is not None and Path(models_dir).is_dir():
        for folder in sorted(Path(models_dir).iterdir()):
            if (folder / "config.json").is_file():
                choices[model_name(folder)] = str(folder)
    choices[model_name(default)] = str(default)
    return dict(sorted(choices.items()))


@dataclass
class ServedModel:
    """One loaded model: the torch model (Grad-CAM, fusion weights), its processor and info, the onnxruntime graph
    that serves its predictions (None: torch does) and the one whose backbone serves Grad-CAM (None: the whole torch
    model does; `served_model` finds it).

    Started without torch (`start_without_torch`), `model` and `processor` are None and `fast_processor` (the
    processor's numpy twin, the same pixels) feeds the graph, until `ModelRegistry.get` loads the rest."""

    model: Any
    processor: Any
    info: ModelInfo
    backend: OnnxClassifier | None = None
    cam_backend: OnnxClassifier | None = None
    fast_processor: NumpyImageProcessor | None = None

    @property
    def backend_name(self) -> str:
        return backend_name(self.backend)

    @property
    def loaded(self) -> bool:
        """Whether the torch model is there (Grad-CAM, fusion weights, batches need it)."""
        return self.model is not None

    def predict(self, image, tta: bool, threshold: float) -> Prediction:
        """Probabilities, decision and OOD flag for one image: on the ONNX graph from the numpy pixels before torch is
        loaded, else as `modeling.inference.predict` (the same graph and pixels once loaded, or torch)."""
        if not self.loaded:
            return self.backend.predict(self.fast_processor(image), tta, threshold)
        from modeling.inference import predict

        return predict(self.model, self.processor, image, tta=tta, threshold=threshold, backend=self.backend)

    def fusion_note(self) -> str:
        return {
            "channel": "channel fusion (one stage3 weight per channel)",
            "spatial": "spatial fusion (one stage3 weight per pixel)",
            "none": "plain ResNet, no fusion",
        }.get(self.info.fusion_mode, f"{self.info.model_type} (not an ASFF-ResNet)")

    def about(self) -> str:
        info = self.info
        positive = info.id2label.get(1, "class 1")
        ood = (f"Mahalanobis distance on pooled features, flagged above {info.ood_threshold:.3g}"
               if info.ood_threshold is not None else "not available for this model")
        runs = "PyTorch" if self.backend is None else f"onnxruntime ({self.backend_name}, `{self.backend.path.name}`)"
        runs += ("; Grad-CAM: PyTorch" if self.cam_backend is None else
                 f"; Grad-CAM: PyTorch above the backbone's stage maps from `{self.cam_backend.path.name}`")
        return (f"**Model:** `{info.name}` ({self.fusion_note()}; {info.num_parameters / 1e6:.1f} M parameters; "
                f"input {info.image_size} px). Decision threshold {info.decision_threshold:.3f} on calibrated "
                f"p({positive}); calibration temperature {info.temperature:.2f}; out-of-distribution check: {ood}. "
                f"Predictions: {runs}.")


class ModelRegistry:
    """The models the dropdown offers, by name: the default one loaded up front, the others on first use (then
    cached). `backend` is what each is asked to predict with (`modeling.onnx_runtime.load_backend`)."""

    def __init__(self, default: ServedModel, sources: dict[str, str] | None = None, backend: str = AUTO):
        self.default_name = default.info.name
        self.sources = {**(sources or {}), self.default_name: default.info.source}
        self.backend = backend
        self._loaded = {self.default_name: default}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return sorted(self.sources)

    def get(self, name: str | None) -> ServedModel:
        """The model with its torch side loaded (loading it, or waiting for the load under way)."""
        name = self._known(name)
        with self._lock:  # one load per model, even when two sessions ask at once
            if name not in self._loaded or not self._loaded[name].loaded:
                self._loaded[name] = self._load(name)
            return self._loaded[name]

    def loaded(self, name: str | None) -> bool:
        """Whether the model's torch side is there (`get` returns at once)."""
        served = self._loaded.get(name or self.default_name)
        return served is not None and served.loaded

    def peek(self, name: str | None) -> ServedModel:
        """The model as it is now, for what needs no torch (predictions, its info): a model started without torch is
        not waited for; one never loaded is loaded."""
        served = self._loaded.get(self._known(name))
        return served if served is not None else self.get(name)

    def _known(self, name: str | None) -> str:
        name = name or self.default_name
        if name not in self.sources:
            raise UnknownModelError(f"Unknown model {name!r}; choose one of {', '.join(self.names)}.")
        return name

    def _load(self, name: str) -> ServedModel:
        from modeling.inference import load_classifier
        from modeling.onnx_runtime import load_backend

        source = self.sources[name]
        try:
            model, processor, info = load_classifier(source)
            backend = load_backend(source, model, processor, self.backend)
            served = served_model(model, processor, dataclasses.replace(info, name=name), backend)
        except Exception as error:  # a broken directory must not take the app down: the user picks another
            logger.exception("could not load %s", source)
            raise ModelLoadError(f"Could not load the model {name}: {type(error).__name__}: {error}") from None
        return served


def served_model(model, processor, info: ModelInfo, backend: OnnxClassifier | None) -> ServedModel:
    """A `ServedModel`; when onnxruntime serves its predictions, Grad-CAM runs torch above the stage maps of its
    float32 graph if it has one (`grad_cam_backend`). With torch asked for (`backend` None), torch does everything."""
    from modeling.onnx_runtime import grad_cam_backend

    cam_backend = None if backend is None else grad_cam_backend(info.source, model, processor, backend)
    return ServedModel(model, processor, info, backend, cam_backend)


def start_without_torch(source: str | Path, backend: str = AUTO) -> ServedModel | None:
    """A `ServedModel` made from a model directory's files and ONNX graph alone (no torch imported): what serves the
    page and predictions while the torch side loads in the background. None where that cannot be (a Hub id, `--backend
    torch`, no usable graph, no onnxruntime, a processor the numpy twin does not reproduce): then everything loads
    first, as `load_classifier` does. A graph that does not match the model is an error for an explicit backend."""
    if backend == "torch" or not Path(source).is_dir() or not onnxruntime_available():
        return None
    fast = NumpyImageProcessor.from_pretrained(source)
    if fast is None or not (Path(source) / "config.json").is_file():
        return None
    config = read_config(source)
    runner = find_backend(source, config, fast.image_size, backend)
    if runner is None:
        return None
    info = read_model_info(source, has_ood_score="ood_score" in runner.output_names)
    cam_backend = find_grad_cam_graph(source, config, fast.image_size, runner)
    return ServedModel(None, None, dataclasses.replace(info, name=model_name(source)), runner, cam_backend, fast)
