"""What a prediction is, without torch: the `Prediction` and `ModelInfo` records, the TTA views, turning calibrated
probabilities into a `Prediction`, and reading a saved model's settings (config, card, parameter count) from its files.

`modeling.inference` (torch) and onnxruntime predictions (`OnnxClassifier.predict`) share these, so both produce the
same records; and the app can answer its first request from a model directory's files and ONNX graph before torch is
imported (see app.py). Needs numpy only; its relative imports (`decision`, `model_card`) are torch-free too.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from .decision import decide

# Grad-CAM hooks a module of the shared model, so a concurrent forward would leak into its activations; and on
# CPU two forwards at once are no faster than one after the other. One lock serialises every forward (onnxruntime's
# too: it uses the same cores).
MODEL_LOCK = threading.Lock()
OOD_WARNING = ("This does not look like a dermoscopic image of a skin lesion; the prediction is not meaningful.")
# Tensors of a checkpoint that are buffers, not parameters: batch-norm statistics and the OOD scorer's Gaussian.
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
BUFFER_PREFIXES = ("ood_scorer.",)


@dataclass
class ModelInfo:
    source: str
    name: str  # what the UI shows: a Hub id, or a directory's name (never a server path)
    model_type: str
    fusion_mode: str | None  # None: not an ASFF-ResNet (e.g. a torchvision baseline)
    id2label: dict[int, str]
    decision_threshold: float
    temperature: float
    ood_threshold: float | None  # None: the model has no OOD score
    image_size: int | None
    num_parameters: int | None  # None: not known before the weights are loaded (no safetensors file)
    card_text: str | None = None
    card_data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prediction:
    """One image's result. `probabilities` are calibrated (softmax(logits / temperature)), averaged over the TTA
    views when `tta`; `label` is the decision at `threshold`. With TTA, `spread` is the standard deviation of p(class
    1) (binary) or of the decided class's probability across the 8 views, and `interval` their (min, max)."""

    probabilities: dict[str, float]
    label: str
    threshold: float
    tta: bool = False
    views: int = 1  # how many TTA views the probabilities average
    spread: float | None = None
    interval: tuple[float, float] | None = None
    ood_score: float | None = None
    ood_threshold: float | None = None

    @property
    def in_distribution(self) -> bool | None:
        """False when the OOD score is above the model's threshold; None when the model has no OOD score."""
        if self.ood_score is None or self.ood_threshold is None:
            return None
        return bool(self.ood_score <= self.ood_threshold)

    def at_threshold(self, threshold: float) -> Prediction:
        """The same probabilities decided at another threshold (the one rule, `decide`); spread and OOD score do not
        depend on it."""
        labels = list(self.probabilities)
        index = decide(list(self.probabilities.values()), threshold)
        return dataclasses.replace(self, label=labels[index], threshold=float(threshold))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: what the API returns."""
        return {"label": self.label, "probabilities": self.probabilities, "threshold": self.threshold,
                "in_distribution": self.in_distribution, "ood_score": self.ood_score,
                "ood_threshold": self.ood_threshold, "tta": self.tta, "views": self.views, "spread": self.spread,
                "interval": list(self.interval) if self.interval else None}


def make_prediction(probs: Any, id2label: dict, threshold: float, view_probs: Any = None,
                    ood_score: float | None = None, ood_threshold: float | None = None) -> Prediction:
    """A `Prediction` from one image's calibrated probabilities (C,) (and its TTA views' (V, C), and OOD score), decided
    at `threshold`. Arrays or tensors."""
    probs = np.asarray(probs, dtype=np.float32)
    index = decide(probs, threshold)
    spread = interval = None
    if view_probs is not None:
        view_probs = np.asarray(view_probs, dtype=np.float32)
        column = view_probs[:, 1] if view_probs.shape[-1] == 2 else view_probs[:, index]
        spread, interval = float(column.std()), (float(column.min()), float(column.max()))
    return Prediction(
        probabilities={str(id2label[i]): float(p) for i, p in enumerate(probs.tolist())},
        label=str(id2label[index]), threshold=float(threshold), tta=view_probs is not None,
        views=1 if view_probs is None else int(view_probs.shape[0]), spread=spread, interval=interval,
        ood_score=None if ood_score is None else float(ood_score), ood_threshold=ood_threshold)


def tta_views(pixel_values: np.ndarray) -> np.ndarray:
    """The dihedral group of a square crop (4 rotations x optional flip, 8 views, the identity first); flips and a
    half turn otherwise. Lesions have no canonical orientation, so every view is as valid as the original.
    (1, C, H, W) -> (V, C, H, W)."""
    if pixel_values.shape[-1] == pixel_values.shape[-2]:
        rotations = [np.rot90(pixel_values, k, axes=(-2, -1)) for k in range(4)]
        views = rotations + [r[..., ::-1] for r in rotations]
    else:
        views = [pixel_values, pixel_values[..., ::-1], pixel_values[..., ::-1, :], pixel_values[..., ::-1, ::-1]]
    return np.ascontiguousarray(np.concatenate(views))


# What the Hub accepts as a model id: NAME or OWNER/NAME.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class ModelNotFoundError(FileNotFoundError):
    """A model source that names a local path where there is no model directory."""


def check_model_source(source: str | Path) -> None:
    """Fails at once when `source` is meant as a local path and no directory is there: a path that is not a Hub id, or
    one whose folder exists (`checkpoints/asff-lite2-isc`). transformers would take it for a Hub id, try the network
    (a long wait offline) and report a connection error; this says what is wrong and names the nearest model
    directories. Hub ids and existing directories pass."""
    path = Path(source).expanduser()
    if path.is_dir():
        return
    text = str(source)
    local = (path.exists() or not HUB_ID.match(text) or text.startswith((".", "~"))
             or (path.parent != Path(".") and path.parent.is_dir()))
    if not local:
        return
    if path.exists():
        raise ModelNotFoundError(f"{text} is a file; a model is a directory (config.json and the weights) or a Hub id")
    message = f"No model directory at {text}"
    if path.parent.is_dir():
        models = sorted(child.name for child in path.parent.iterdir() if (child / "config.json").is_file())
        near = difflib.get_close_matches(path.name, models, n=1)
        if near:
            message += f"; did you mean {path.parent / near[0]}?"
        elif models:
            message += f"; model directories in {path.parent}: {', '.join(models)}"
    raise ModelNotFoundError(message)


def local_model_dir(source: str | Path) -> Path:
    """Where a model's files are: a local directory as it is; a Hub id downloaded (`snapshot_download`: weights, code,
    card and its `onnx/` graphs, into the Hub cache) so that onnxruntime can serve it as it serves a local directory
    (`modeling.onnx_runtime` looks up ONNX files in local directories only)."""
    if Path(source).is_dir():
        return Path(source)
    check_model_source(source)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(source)))


def model_name(source: str | Path) -> str:
    """A Hub id as it is; a local directory by its name only (the UI must not show server paths)."""
    path = Path(source)
    return path.resolve().name if path.exists() else str(source)


def read_config(model_dir: str | Path) -> SimpleNamespace:
    """A model directory's `config.json` as attributes (`id2label` with int keys), for code that must not import
    transformers; `modeling.decision` reads its threshold and temperature the same way as from a `PretrainedConfig`."""
    values = json.loads((Path(model_dir) / "config.json").read_text())
    values["id2label"] = {int(k): v for k, v in values.get("id2label", {0: "LABEL_0", 1: "LABEL_1"}).items()}
    return SimpleNamespace(**values)


def count_parameters(model_dir: str | Path) -> int | None:
    """Parameters in a directory's safetensors weights (buffers left out), read from the files' headers; None without
    safetensors files."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for path in files:
        with safe_open(str(path), framework="numpy") as weights:
            for key in weights.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                if not key.endswith(BUFFER_SUFFIXES) and not key.startswith(BUFFER_PREFIXES):
                    total += math.prod(weights.get_slice(key).get_shape())
    return total


def read_model_info(model_dir: str | Path, has_ood_score: bool) -> ModelInfo:
    """The `ModelInfo` that `modeling.inference.load_classifier` gives, from the directory's files alone (no weights
    loaded). `has_ood_score`: whether the model computes one (its ONNX graph outputs `ood_score`)."""
    from .decision import decision_threshold, temperature
    from .model_card import read_model_card

    config = read_config(model_dir)
    card_text, card_data = read_model_card(model_dir)
    ood = getattr(config, "ood_threshold", None)
    return ModelInfo(
        source=str(model_dir), name=model_name(model_dir), model_type=config.model_type,
        fusion_mode=getattr(config, "fusion_mode", None) if config.model_type == "asff_resnet" else None,
        id2label=dict(config.id2label), decision_threshold=decision_threshold(config),
        temperature=temperature(config), ood_threshold=float(ood) if has_ood_score and ood is not None else None,
        image_size=getattr(config, "image_size", None), num_parameters=count_parameters(model_dir),
        card_text=card_text, card_data=card_data)


__all__ = [
    "HUB_ID",
    "MODEL_LOCK",
    "OOD_WARNING",
    "ModelInfo",
    "ModelNotFoundError",
    "Prediction",
    "check_model_source",
    "count_parameters",
    "local_model_dir",
    "make_prediction",
    "model_name",
    "read_config",
    "read_model_info",
    "tta_views",
]
