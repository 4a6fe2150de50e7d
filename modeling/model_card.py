"""The model card (README.md) of a trained model: writing it (`build_model_card`, from `model_card_template.md` with
`huggingface_hub.ModelCard.from_template`) and reading it back (`read_model_card`).

The card reports the decision rule (`decision_threshold` in its metadata, the temperature, the OOD threshold) but is
not read at inference time: the rule lives in the model's config (`modeling.decision`).
"""

import math
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

PAPER_URL = "https://arxiv.org/abs/2510.03876"
TEMPLATE_PATH = Path(__file__).with_name("model_card_template.md")
# What the card's usage snippets load (the template's `model_path`): the pipeline's model and both from_pretrained.
USAGE_SNIPPET_PATH = re.compile(r'(pipeline\("image-classification", model=|\.from_pretrained\()"[^"]*"')


def read_model_card(source: str | Path) -> tuple[str | None, dict[str, Any]]:
    """(card text, metadata dict) of a model directory or Hub id; (None, {}) when it has no card (it is optional)."""
    path = Path(source) / "README.md"
    if Path(source).is_dir() and not path.is_file():
        return None, {}
    try:
        card = ModelCard.load(path if path.is_file() else str(source), ignore_metadata_errors=True)
    except Exception:  # no card on the Hub, or offline
        return None, {}
    return card.text, card.data.to_dict()


def trained_from_scratch(settings: dict, base_model: str | None) -> bool:
    """No pretrained weights at all: neither a base model nor pretrained backbone weights (`init`)."""
    return not base_model and str(settings.get("init", "random")).startswith("random")


def _describe_model(settings: dict, base_model: str | None) -> tuple[str, list[str]]:
    """A sentence on the architecture and tags, from the training settings (`architecture` for a torchvision
    baseline, `fusion_mode` and `backbone` for ASFF)."""
    if base_model:
        start = f"initialised from `{base_model}`"
    elif trained_from_scratch(settings, base_model):
        start = "trained from scratch (random initialisation)"
    else:
        start = f"its backbone initialised from {settings['init']} weights"
    architecture = settings.get("architecture")
    if architecture and architecture != "asff_resnet":
        return (
            f"A torchvision `{architecture}` classifier, {start}: one of the classic CNN baselines the paper "
            f"([arXiv:2510.03876]({PAPER_URL})) compares its ASFF-ResNet-50 against.",
            ["baseline", str(architecture)],
        )
    fusion = {
        "channel": "fused with learned per-channel weights (the paper's published fusion: a softmax weight per "
        "channel from the pooled features of both levels)",
        "spatial": "fused with learned per-pixel weights (the original ASFF of Liu et al. 2019)",
        "none": "not fused: this is the plain ResNet-50 ablation with the same head",
    }[settings.get("fusion_mode", "channel")]
    backbone = settings.get("backbone")
    if backbone and not str(backbone).startswith("resnet"):
        fusion = fusion.replace("the plain ResNet-50 ablation", f"the plain {backbone} ablation")
        return (
            f"ASFF ([arXiv:2510.03876]({PAPER_URL})) on a `{backbone}` backbone (timm, through transformers' "
            f"TimmBackbone), {start}: its last two feature stages are {fusion}, followed by global average pooling "
            "and the paper's MLP head. The paper's architecture is the same fusion on ResNet-50.",
            ["asff", str(backbone)],
        )
    return (
        f"ASFF-ResNet-50 ([arXiv:2510.03876]({PAPER_URL})), {start}: a ResNet-50 whose stage3 (14×14×1024) and "
        f"stage4 (7×7×2048, projected and upsampled) feature maps are {fusion}, followed by global average pooling "
        "and an MLP head.",
        ["asff", "resnet"],
    )


def _dataset_ids(dataset: str | list[str]) -> tuple[list[str] | None, str, str]:
    """(metadata `datasets`, dataset_type, dataset_name): a Hub id goes into the metadata; a local folder does not.
    Several sources: the Hub ids among them, and their names joined with " + "."""
    if not isinstance(dataset, str):
        ids = [_dataset_ids(d) for d in dataset]
        hub = [i for found, _, _ in ids for i in (found or [])]
        kinds = {kind for _, kind, _ in ids}
        return hub or None, kinds.pop() if len(kinds) == 1 else "mixed", " + ".join(name for _, _, name in ids)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", dataset) and not Path(dataset).exists():
        return [dataset], dataset, dataset
    return None, "imagefolder", Path(dataset).name or dataset


def _calibration_text(settings: dict, before: str, after: str) -> tuple[str, str, str]:
    """(limitations line on calibration, limitations line on OOD images, the card section) from the run settings
    (`training.calibration_summary`) and the test ECE before and after temperature scaling, formatted."""
    temperature = settings.get("temperature")
    if temperature is None:
        note = f"Probabilities are not calibrated (expected calibration error {after} on the test set)."
        section = "No validation split: neither temperature scaling nor an OOD detector was fitted."
    else:
        note = (f"Probabilities are temperature-scaled on validation (T = {temperature:.3g}); expected calibration "
                f"error on the test set {before} before, {after} after.")
        section = (f"- **Temperature scaling** (Guo et al. 2017), fitted on the validation split: "
                   f"T = {temperature:.4g} (`config.temperature`). Test ECE {before} → {after}; "
                   "the reliability figure shows both. The decision threshold is on the calibrated probability.")
    threshold = settings.get("ood_threshold")
    if threshold is None:
        ood = "this model has no OOD detector; it classifies anything it is given."
    else:
        rate = settings.get("ood_pass_rate") or 0.95
        features = ("the pooled fused features and both fused stages' averages"
                    if settings.get("ood_feature") == "stages" else "the pooled features")
        ood = (f"flagged by a Mahalanobis-distance detector on {features} (the warning is a screen, not a "
               "guarantee: unusual dermoscopy is flagged too, and some non-dermoscopic images pass).")
        section += (f"\n- **Out-of-distribution flag**: Mahalanobis distance of {features} to the nearest "
                    "class mean (shared covariance, Ledoit-Wolf; Lee et al. 2018), fitted on the training images; "
                    f"images scoring above {threshold:.4g} (`config.ood_threshold`, the {rate:.0%} quantile of "
                    "validation scores) are flagged as outside the training distribution. The score is computed in "
                    "the same forward pass (`outputs.ood_score`).")
    return note, ood, section


def _frame_share_text(summary: dict | None) -> str | None:
    """The lesion-focus paragraph from a `lesion_focus.frame_shares` summary (None without one, or without values)."""
    if not summary or summary.get("mean") is None:
        return None
    from .report import format_interval

    size = summary.get("input_size")
    ci = f" {format_interval(summary['mean_ci95'])}" if summary.get("mean_ci95") else ""
    sample = f", a sample of {summary['images']}" if summary.get("sample") else ""
    zero = f"; {summary['n_zero_cam']} all-zero CAM(s) left out" if summary.get("n_zero_cam") else ""
    return (f"Share of Grad-CAM mass ({summary['target']} map, each image's true class, before any min-max scaling) "
            f"in the outer 1/8 of each side of the {f'{size[0]}-px ' if size else ''}input (43.75 % of the area: a "
            f"uniform map scores {summary['uniform_share']:.4g}): mean **{summary['mean']:.3f}**{ci} (95 % CI), "
            f"median {summary['median']:.3f}, {summary['share_above_uniform']:.0%} of images above uniform "
            f"(n = {summary['n']} test images{sample}{zero}). Lower means more focus on the centre, where dermoscopy "
            "puts the lesion; `report/cam_frame_share_worst.png` shows the 8 highest." + _lesion_text(summary))


def _lesion_text(summary: dict) -> str:
    """The proxy-lesion-mask sentence of the lesion-focus paragraph (`lesion_focus.lesion_reference`), or ''."""
    reference = summary.get("lesion_reference") or {}
    if not reference.get("n"):
        return ""
    text = (f" Against proxy lesion masks (Otsu; {reference['n']} images): the CAMs put "
            f"{reference['cam_on_lesion']['mean']:.3f} of their mass on the lesion, which covers "
            f"{reference['mask_area']:.3f} of the area (lift {reference['lift']:.2f}; 1 = no preference for the "
            "lesion)")
    as_cam = reference.get("lesion_as_cam")
    if as_cam:
        text += (f"; a CAM that was exactly the lesion, at the CAM's resolution, would score a frame share of "
                 f"{as_cam['frame_share']:.3f} and a lift of {as_cam['lift']:.2f}")
    return text + "."


def _sources_table(sources: dict | None) -> str | None:
    """Per source and split: n, ROC AUC and accuracy with their intervals, sensitivity and specificity, at the
    model's threshold (`metrics.json` "sources"); None with a single source."""
    if not sources:
        return None
    from .report import format_interval, format_number

    rows = ["| source | split | n | ROC AUC [95 % CI] | accuracy [95 % CI] | sensitivity | specificity |",
            "|---|---|---|---|---|---|---|"]
    for source, splits in sources.items():
        for split, summary in splits.items():
            if not summary:
                continue
            m, ci = summary["metrics"], summary.get("ci95", {})
            rows.append(f"| {source} | {split} | {summary['n']} | {format_number(m.get('roc_auc'))} "
                        f"{format_interval(ci.get('roc_auc'))} | {format_number(m.get('accuracy'))} "
                        f"{format_interval(ci.get('accuracy'))} | {format_number(m.get('recall'))} | "
                        f"{format_number(m.get('specificity'))} |")
    return "\n".join(rows)


def build_model_card(
    *,
    model_name: str,
    summary: dict,
    settings: dict,
    command: str,
    dataset: str | list[str],
    label_names: list[str],
    decision_threshold: float,
    base_model: str | None = None,
    validation_summary: dict | None = None,
    frame_share: dict | None = None,
    sources: dict | None = None,
    model_path: str | None = None,
) -> ModelCard:
    """README.md of a trained model: Hub metadata (model-index with the test metrics, `decision_threshold` read by the
    app as its slider default) and a body with the disclaimer, intended use, limitations, data, settings, command,
    results and usage. `summary` / `validation_summary` are `write_report` summaries; `frame_share` the test split's
    lesion focus (`lesion_focus.frame_shares` summary), shown when given; `sources` the per-source summaries
    ({source: {split: summary}}, metrics.json "sources") of a model trained on several sources; `model_path` what the
    usage snippets load (the Hub id it is pushed to, or the directory as the command named it; default `model_name`)."""
    # The report's tables and number formats; imported here so that reading a card (the app, the prediction CLI)
    # does not load the report's statistics and figures.
    from .report import METRIC_NAMES, describe_threshold, format_number, metrics_table

    description, arch_tags = _describe_model(settings, base_model)
    datasets, dataset_type, dataset_name = _dataset_ids(dataset)
    values = {**summary["metrics"], "ece": summary["ece"]}
    eval_results = [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split="test",
            metric_type=name,
            metric_name=METRIC_NAMES.get(name, name),
            metric_value=round(float(value), 4),
            metric_config=f"threshold={summary['threshold']:.4g}" if name not in ("roc_auc", "pr_auc", "ece") else None,
        )
        for name, value in values.items()
        if value is not None and math.isfinite(value)
    ]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license="apache-2.0",
        tags=["image-classification", "medical-imaging", "dermoscopy", "skin-lesion", "research-only", *arch_tags],
        datasets=datasets,
        base_model=base_model,
        model_name=model_name,
        eval_results=eval_results or None,
        decision_threshold=float(decision_threshold),
    )
    calibration_note, ood_note, calibration_section = _calibration_text(
        settings, format_number(summary.get("ece_uncalibrated")), format_number(summary["ece"]))
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        model_path=model_path or model_name,
        description=description,
        base_model=base_model,
        label_names=list(label_names),
        positive=label_names[1] if len(label_names) == 2 else None,
        decision_threshold=float(decision_threshold),
        dataset=dataset if isinstance(dataset, str) else " + ".join(dataset),
        n=summary["n"],
        counts=", ".join(f"{name}: {count}" for name, count in summary["class_counts"].items()),
        threshold_source=summary["threshold_source"],
        settings=settings,
        command=command,
        test_table=metrics_table(summary),
        validation=validation_summary,
        validation_threshold=None if validation_summary is None else describe_threshold(validation_summary),
        validation_table=None if validation_summary is None else metrics_table(validation_summary),
        calibration_note=calibration_note,
        ood_note=ood_note,
        calibration_section=calibration_section,
        frame_share_text=_frame_share_text(frame_share),
        sources_table=_sources_table(sources),
        datasets_list=[dataset] if isinstance(dataset, str) else list(dataset),
        from_scratch=trained_from_scratch(settings, base_model),
    )


def with_usage_path(content: str, model_path: str) -> str:
    """A card's text with its usage snippets loading `model_path` (a release moved to another directory or Hub id)."""
    return USAGE_SNIPPET_PATH.sub(lambda match: f'{match.group(1)}"{model_path}"', content)


__all__ = ["PAPER_URL", "build_model_card", "read_model_card", "with_usage_path"]
