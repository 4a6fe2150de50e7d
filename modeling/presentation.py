"""How a prediction and its class activation map read on screen: the decision line at the threshold shown, the
probability it rests on, the out-of-distribution verdict, the CAM's caption and colour scale, the batch table's names
and columns, and the names of the CAM targets and methods.

Torch-free (numpy; matplotlib on first use for `cam_image`), so that the app can serve its first predictions before
torch is imported (see app.py); `modeling.explain` takes its CAM vocabulary from here.
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .prediction import OOD_WARNING, ModelInfo, Prediction

if TYPE_CHECKING:
    from .explain import ExplainResult

# The grids depend on the model's input size (ResNet-50 or EfficientNet at 224 px: 7x7 and 14x14; at 288 px: 9x9 and
# 18x18), so the names do not state them; `modeling.explain.cam_target_name` does, for one model.
CAM_TARGETS = {"fused": "fused features (after ASFF)", "stage4": "stage4 (the coarser stage)",
               "stage3": "stage3 (the finer stage)"}
# How each method is named on screen ("LayerCAM of malignant"): every method here is not Grad-CAM. The keys are the
# methods `modeling.explain` offers (its CAM_METHODS maps them to pytorch-grad-cam's classes).
CAM_METHOD_NAMES = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "hirescam": "HiResCAM",
    "xgradcam": "XGrad-CAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "Eigen-Grad-CAM",
    "gradcam-elementwise": "Grad-CAM (element-wise)",
}
# Methods whose map ignores the class (EigenCAM: the first principal component of the target's activations): the same
# map for every class, so the UI must not say it explains one.
CLASS_AGNOSTIC_METHODS = ("eigencam",)
CAM_HOW_TO_READ_CLASS_AGNOSTIC = (
    "Warm colours (red) mark where the target layer's activations vary most (their first principal component). "
    "EigenCAM ignores the class: the map is the same whichever class is decided. It does not outline the lesion."
)
CAM_EMPTY = (
    "**This map is empty:** no region of the image raised the score of **{label}** at this layer (Grad-CAM keeps only "
    "what raised it). The decision still stands; the model's head reached it from the image as a whole."
)
CAM_HOW_TO_READ = (
    "Warm colours (red) mark the regions that raised the score of **{label}** most; blue ones had little influence. "
    "It shows where the model looked, not why, and it does not outline the lesion."
)
CAM_HOW_TO_READ_AGAINST = (
    "Warm colours (red) mark the regions that favoured **{label}** over **{other}** most (the margin between their "
    "scores, which the decision rests on); blue ones did not. It shows where, not why, and it does not outline the "
    "lesion."
)
CAM_EMPTY_AGAINST = (
    "**This map is empty:** no region favoured **{label}** over **{other}** at this layer (Grad-CAM keeps only what "
    "favoured it). The decision still stands; the model's head reached it from the image as a whole."
)
OOD_NOT_AVAILABLE = "Out-of-distribution check not available for this model."


def threshold_problem(value: Any, minimum: float = 0.0, maximum: float = 1.0) -> str | None:
    """What is wrong with a threshold typed into a slider's number box (None when it is usable)."""
    if value is None or value == "":
        return "The decision threshold box is empty"
    if not minimum <= float(value) <= maximum:
        return f"The decision threshold must be between {minimum:g} and {maximum:g}; {float(value):g} was typed"
    return None


def decimals_that_separate(probability: float, threshold: float, minimum: int = 3, maximum: int = 12) -> int:
    """The fewest decimals (at least `minimum`) at which the rounded probability and threshold still compare as the
    exact values do, so that "p = 0.444 < threshold 0.444" never appears on screen."""
    for digits in range(minimum, maximum + 1):
        p, t = round(probability, digits), round(threshold, digits)
        if (p >= t) == (probability >= threshold) and (p != t or probability == threshold):
            return digits
    return maximum


def probability_text(prediction: Prediction, digits: int = 3) -> str:
    """'p(malignant) = 0.620 ± 0.050 (range 0.550–0.700 over 8 views)' for a two-class prediction (the spread with
    TTA only); the decided class's probability otherwise."""
    labels = list(prediction.probabilities)
    name = labels[1] if len(labels) == 2 else prediction.label
    text = f"p({name}) = {prediction.probabilities[name]:.{digits}f}"
    if prediction.spread is not None:
        text += f" ± {prediction.spread:.3f}"
        if prediction.interval is not None:
            low, high = prediction.interval
            text += f" (range {low:.3f}–{high:.3f} over {prediction.views} views)"
    return text


def ood_text(prediction: Prediction) -> str:
    """The out-of-distribution line under the decision."""
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
        digits = decimals_that_separate(prediction.probabilities[positive], prediction.threshold)
        parts.append(f'<p class="detail">{_text(probability_text(prediction, digits))} {sign} threshold '
                     f"{prediction.threshold:.{digits}f}</p>")
    else:
        parts.append(f'<p class="detail">{_text(probability_text(prediction))} (most probable class)</p>')
    parts.append(f'<p class="ood-note">{_text(ood_text(prediction))}</p>')
    return f'<div class="decision{" not-meaningful" if ood else ""}">{"".join(parts)}</div>'


def prediction_json(prediction: Prediction, info: ModelInfo, cam_label: str | None = None,
                    backend: str = "torch", cam_against: str | None = None) -> dict:
    """What the API returns besides the components: `Prediction.as_dict()` with the model's name and the backend that
    computed the probabilities (and the class the Grad-CAM explains, and the one it explains it against)."""
    data = {"model": info.name, "backend": backend, **prediction.as_dict()}
    if cam_label is not None:
        data["cam_label"] = cam_label
    if cam_against is not None:
        data["cam_against"] = cam_against
    return data


def cam_caption(cam_label: str, target: str, method: str, empty: bool = False, target_name: str = "",
                against: str | None = None) -> str:
    """`target_name`: the target with its grid for the model on screen (`ExplainResult.target_name`); `against`: the
    class the CAM explains `cam_label` against (`ExplainResult.cam_against`), if any."""
    where = f"({target_name or CAM_TARGETS.get(target, target)}, {method})"
    name = CAM_METHOD_NAMES.get(method, method)
    if method in CLASS_AGNOSTIC_METHODS:
        return f"**{name}, the same for every class** {where}. " + CAM_HOW_TO_READ_CLASS_AGNOSTIC
    if against:
        caption = (f"**{name} of *{cam_label}* against *{against}*** {where}. "
                   + CAM_HOW_TO_READ_AGAINST.format(label=cam_label, other=against))
        return caption + (" " + CAM_EMPTY_AGAINST.format(label=cam_label, other=against) if empty else "")
    caption = f"**{name} of *{cam_label}*** {where}. " + CAM_HOW_TO_READ.format(label=cam_label)
    return caption + (" " + CAM_EMPTY.format(label=cam_label) if empty else "")


def result_caption(result: ExplainResult) -> str:
    """`cam_caption` for an `ExplainResult`."""
    return cam_caption(result.cam_label, result.target, result.method, result.cam_is_empty, result.target_name,
                       result.cam_against)


def cam_subject(result: ExplainResult) -> str:
    """What the CAM on screen explains: 'Grad-CAM of *malignant*' (or 'LayerCAM of ...': the method's name; '... against
    *benign*' for the margin), or the method alone for one that ignores the class."""
    name = CAM_METHOD_NAMES.get(result.method, result.method)
    if result.method in CLASS_AGNOSTIC_METHODS:
        return f"{name} (the same for every class)"
    against = f" against *{result.cam_against}*" if result.cam_against else ""
    return f"{name} of *{result.cam_label}*{against}"


def cam_image(result: ExplainResult) -> np.ndarray:
    """The CAM overlay with its colour scale, whose high end names the class it explains (none for a method that
    ignores the class)."""
    from .plots import with_colour_scale  # matplotlib: imported on first use

    high = "high" if result.method in CLASS_AGNOSTIC_METHODS else f"high: {result.cam_label}"
    return with_colour_scale(result.cam_overlay, "low", high)


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
    """The batch table's columns (the CSV adds the settings: model, threshold, tta, backend); `label` right after
    `file`, so that it stays visible on a phone, and `in_distribution` right after it: a label is not meaningful for an
    image flagged as out of distribution, and the flag must not sit a sideways scroll away from it."""
    return ["file", "label", "in_distribution", *(f"p_{label}" for label in info.id2label.values()), "p_spread",
            "ood_score", "error"]


__all__ = [
    "CAM_EMPTY",
    "CAM_EMPTY_AGAINST",
    "CAM_HOW_TO_READ",
    "CAM_HOW_TO_READ_AGAINST",
    "CAM_HOW_TO_READ_CLASS_AGNOSTIC",
    "CAM_METHOD_NAMES",
    "CAM_TARGETS",
    "CLASS_AGNOSTIC_METHODS",
    "OOD_NOT_AVAILABLE",
    "cam_caption",
    "cam_image",
    "cam_subject",
    "decimals_that_separate",
    "decision_html",
    "ood_text",
    "prediction_json",
    "probability_text",
    "result_caption",
    "table_columns",
    "threshold_problem",
    "unique_names",
]
