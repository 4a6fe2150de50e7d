"""Evaluation report: report files and the model card. The statistics (threshold, calibration error, bootstrap
intervals) are in `metrics.statistics`, the figures in `plots`, the comparison tables in `compare`."""

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from sklearn.metrics import confusion_matrix

from .metrics import compute_classification_metrics
from .metrics.statistics import ECE_BINS, _as_arrays, bootstrap_ci, expected_calibration_error, finite_or_none
from .plots import report_figures, roc_by_source_figure

PAPER_URL = "https://arxiv.org/abs/2510.03876"
COMPARISON_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc", "ece")
METRIC_NAMES = {
    "accuracy": "Accuracy",
    "precision": "Precision",
    "recall": "Recall (sensitivity)",
    "specificity": "Specificity",
    "f1": "F1",
    "roc_auc": "ROC AUC",
    "pr_auc": "PR AUC (average precision)",
    "ece": "Expected calibration error",
}
PREDICTIONS_FILE = "predictions.csv"


def format_number(value, digits: int = 3) -> str:
    """A metric in a table: `digits` decimals, "–" when undefined (None or NaN)."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_interval(ci, digits: int = 3) -> str:
    """A confidence interval in a table: "[low, high]", "–" when missing or undefined."""
    return "–" if not ci or None in ci else f"[{format_number(ci[0], digits)}, {format_number(ci[1], digits)}]"


def metrics_table(summary: dict) -> str:
    """metric | value | 95 % CI | value at 0.5, from a report summary."""
    names = [*[k for k in COMPARISON_METRICS if k in summary["metrics"]], "ece"]
    rows = ["| metric | value | 95 % CI | value at 0.5 |", "|---|---|---|---|"]
    for name in names:
        value = summary["ece"] if name == "ece" else summary["metrics"][name]
        at_half = summary["ece"] if name == "ece" else summary["metrics_at_0.5"][name]
        ci = format_interval(summary["ci95"].get(name))
        rows.append(f"| {METRIC_NAMES[name]} | {format_number(value)} | {ci} | {format_number(at_half)} |")
    if summary.get("ece_uncalibrated") is not None:
        before = format_number(summary["ece_uncalibrated"])
        rows.append(f"| Expected calibration error before temperature scaling | {before} | – | – |")
    return "\n".join(rows)


def describe_threshold(summary: dict) -> str:
    """The decision threshold of a report summary and where it came from."""
    return f"{summary['threshold']:.4g} (source: {summary['threshold_source']})"


def write_report(
    out_dir,
    labels,
    probs,
    label_names: list[str],
    threshold: float = 0.5,
    threshold_source: str = "default",
    title: str = "",
    n_resamples: int = 1000,
    sample_ids: list[str] | None = None,
    uncalibrated_probs=None,
) -> dict:
    """Writes `roc.png`, `pr.png`, `confusion.png`, `reliability.png`, `report.json`, `report.md` and `predictions.csv`
    (one row per sample: `sample_ids` or the row number, label, probabilities; what paired comparisons between
    models need) into `out_dir` and returns the JSON summary (undefined values as None). Threshold metrics use
    `threshold` on p(class 1) for two classes, the argmax for more; confidence intervals are 95 % percentile
    bootstrap intervals (`n_resamples=0` skips them). With `uncalibrated_probs` (the same model before temperature
    scaling), the report also gives their ECE and draws both in the reliability figure."""
    labels, probs = _as_arrays(labels, probs)
    uncalibrated = None if uncalibrated_probs is None else _as_arrays(labels, uncalibrated_probs)[1]
    if len(label_names) != probs.shape[1]:
        raise ValueError(f"{len(label_names)} label names for {probs.shape[1]} classes")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threshold = float(threshold)
    metrics = compute_classification_metrics(probs, labels, threshold)
    ece = expected_calibration_error(labels, probs, ECE_BINS)
    ci = bootstrap_ci(labels, probs, threshold, n_resamples=n_resamples) if n_resamples > 0 else {}
    ece_before = None if uncalibrated is None else expected_calibration_error(labels, uncalibrated, ECE_BINS)
    figures = report_figures(out_dir, labels, probs, list(label_names), threshold,
                             {**metrics, "ece": ece, "ece_uncalibrated": ece_before}, title, uncalibrated)
    predicted = (probs[:, 1] >= threshold).astype(np.int64) if probs.shape[1] == 2 else probs.argmax(1)
    summary = finite_or_none(
        {
            "title": title,
            "n": len(labels),
            "class_counts": {name: int((labels == k).sum()) for k, name in enumerate(label_names)},
            "threshold": threshold,
            "threshold_source": threshold_source,
            "metrics": metrics,
            "metrics_at_0.5": compute_classification_metrics(probs, labels, 0.5),
            "ci95": {name: list(bounds) for name, bounds in ci.items()},
            "ece": ece,
            "ece_uncalibrated": ece_before,
            "confusion_matrix": confusion_matrix(labels, predicted, labels=list(range(len(label_names)))).tolist(),
            "figures": figures,
        }
    )
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_predictions(out_dir / PREDICTIONS_FILE, labels, probs, label_names, sample_ids)
    counts = ", ".join(f"{name} {count}" for name, count in summary["class_counts"].items())
    lines = [
        f"# {title or 'Evaluation report'}",
        "",
        f"n = {summary['n']} ({counts}). Decision threshold {describe_threshold(summary)}"
        + ("" if probs.shape[1] == 2 else ", unused: argmax over classes")
        + f". 95 % CIs: percentile bootstrap, {n_resamples} resamples.",
        "",
        metrics_table(summary),
        "",
        *[f"![{Path(name).stem}]({name})" for name in figures],
    ]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return summary


def source_dir_name(source: str) -> str:
    """A source name (folder name or Hub id) as one directory name."""
    return re.sub(r"[^\w.-]+", "_", source.replace("/", "__")).strip("_") or "source"


def write_source_reports(
    out_dir,
    labels,
    probs,
    label_names: list[str],
    sources,
    threshold: float = 0.5,
    threshold_source: str = "default",
    title: str = "",
    n_resamples: int = 1000,
    sample_ids: list[str] | None = None,
    uncalibrated_probs=None,
) -> dict[str, dict]:
    """Per-source reports beside a pooled one: `write_report` on each source's rows (`sources[i]` names row i) into
    `out_dir/sources/<source>/`, one ROC figure with a curve per source and the pooled curve (`roc_by_source.png`),
    and a per-source table appended to `out_dir/report.md` (write the pooled report there first). The decision
    threshold is the same for every source (the model has one). Returns {source: summary}."""
    labels, probs = _as_arrays(labels, probs)
    sources = np.asarray([str(name) for name in sources], dtype=object)
    if len(sources) != len(labels):
        raise ValueError(f"{len(sources)} source names for {len(labels)} samples")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(sources.tolist()))
    summaries: dict[str, dict] = {}
    for name in names:
        rows = np.flatnonzero(sources == name)
        summaries[name] = write_report(
            out_dir / "sources" / source_dir_name(name), labels[rows], probs[rows], label_names, threshold=threshold,
            threshold_source=threshold_source, title=f"{title} [{name}]" if title else name,
            n_resamples=n_resamples, sample_ids=None if sample_ids is None else [sample_ids[i] for i in rows],
            uncalibrated_probs=None if uncalibrated_probs is None else np.asarray(uncalibrated_probs)[rows])
    figure = roc_by_source_figure(out_dir, labels, probs, sources, names, label_names, title)
    header = "| source | n | accuracy | sensitivity | specificity | ROC AUC (95 % CI) | PR AUC | ECE |"
    rows_md = [header, "|---|---|---|---|---|---|---|---|"]
    pooled = json.loads((out_dir / "report.json").read_text()) if (out_dir / "report.json").is_file() else None
    for name, summary in [*summaries.items(), *([("pooled", pooled)] if pooled else [])]:
        metrics = summary["metrics"]
        auc = f"{format_number(metrics.get('roc_auc'))} {format_interval(summary['ci95'].get('roc_auc'))}"
        cells = " | ".join(format_number(metrics.get(key)) for key in ("accuracy", "recall", "specificity"))
        rows_md.append(f"| {name} | {summary['n']} | {cells} | {auc} | {format_number(metrics.get('pr_auc'))} "
                       f"| {format_number(summary['ece'])} |")
    links = ", ".join(f"[{name}](sources/{source_dir_name(name)}/report.md)" for name in names)
    section = ["", "## Per source", "", f"Threshold {threshold:.4g} for every source. Reports: {links}.", "",
               *rows_md, ""]
    if figure:
        section += [f"![roc_by_source]({figure})", ""]
    report_md = out_dir / "report.md"
    report_md.write_text((report_md.read_text() if report_md.is_file() else "") + "\n".join(section))
    return summaries


def write_predictions(path, labels, probs, label_names: list[str], sample_ids: list[str] | None = None) -> None:
    """`predictions.csv`: id, label name, one probability column per class (9 significant digits: float32 exactly,
    so metrics recomputed from the file equal the report's)."""
    labels, probs = _as_arrays(labels, probs)
    ids = [str(i) for i in range(len(labels))] if sample_ids is None else [str(i) for i in sample_ids]
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} sample ids for {len(labels)} samples")
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label", *[f"p_{name}" for name in label_names]])
        for sample, label, row in zip(ids, labels, probs, strict=True):
            writer.writerow([sample, label_names[label], *[f"{p:.9g}" for p in row]])


def read_predictions(path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(ids, labels, probabilities, label names) from a `predictions.csv` written by `write_report`."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    label_names = [name.removeprefix("p_") for name in rows[0][2:]]
    ids = [row[0] for row in rows[1:]]
    labels = np.array([label_names.index(row[1]) for row in rows[1:]], dtype=np.int64)
    probs = np.array([[float(p) for p in row[2:]] for row in rows[1:]], dtype=np.float32)
    return ids, labels, probs, label_names


def _describe_model(settings: dict, base_model: str | None) -> tuple[str, list[str]]:
    """A sentence on the architecture and tags, from the training settings (`architecture` for a torchvision
    baseline, `fusion_mode` for ASFF-ResNet)."""
    start = f"initialised from `{base_model}`" if base_model else "trained from scratch (random initialisation)"
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
        ood = ("flagged by a Mahalanobis-distance detector on the pooled features (the warning is a screen, not a "
               "guarantee: unusual dermoscopy is flagged too, and some non-dermoscopic images pass).")
        section += ("\n- **Out-of-distribution flag**: Mahalanobis distance of the pooled features to the nearest "
                    "class mean (shared covariance, Ledoit-Wolf; Lee et al. 2018), fitted on the training images; "
                    f"images scoring above {threshold:.4g} (`config.ood_threshold`, the {rate:.0%} quantile of "
                    "validation scores) are flagged as outside the training distribution. The score is computed in "
                    "the same forward pass (`outputs.ood_score`).")
    return note, ood, section


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
) -> ModelCard:
    """README.md of a trained model: Hub metadata (model-index with the test metrics, `decision_threshold` read by the
    app as its slider default) and a body with the disclaimer, intended use, limitations, data, settings, command,
    results and usage. `summary` / `validation_summary` are `write_report` summaries."""
    description, arch_tags = _describe_model(settings, base_model)
    datasets, dataset_type, dataset_name = _dataset_ids(dataset)
    dataset = dataset if isinstance(dataset, str) else " + ".join(dataset)
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
    positive = label_names[1] if len(label_names) == 2 else None
    counts = ", ".join(f"{name}: {count}" for name, count in summary["class_counts"].items())
    settings_rows = "\n".join(f"| `{key}` | `{value}` |" for key, value in settings.items())
    if positive:
        decision = (f"Predict **{positive}** when p({positive}) ≥ **{decision_threshold:.4g}** (threshold source: "
                    f"{summary['threshold_source']}). The test metrics below use that threshold; the last column "
                    "shows them at 0.5.")
        score = f'probs[model.config.label2id["{positive}"]]'
        rule = f'"{positive}" if {score} >= model.config.decision_threshold else "{label_names[0]}"'
    else:
        decision = "The predicted class is the argmax of the probabilities."
        rule = "model.config.id2label[int(probs.argmax())]"
    validation = ""
    if validation_summary is not None:
        validation = (f"\n### Validation set (n = {validation_summary['n']}), threshold "
                      f"{describe_threshold(validation_summary)}\n\n{metrics_table(validation_summary)}\n")
    scratch = (
        "" if base_model else "- **Trained from scratch**: no pretrained weights were used, so the results are not "
        "comparable to the paper's ImageNet-initialised numbers and are expected to be lower.\n"
    )
    calibration_note, ood_note, calibration_section = _calibration_text(
        settings, format_number(summary.get("ece_uncalibrated")), format_number(summary["ece"]))
    body = f"""
# {model_name}

{description}

> **RESEARCH USE ONLY. NOT A DIAGNOSTIC DEVICE.** This model has not been clinically validated or approved by any
> regulator. Do not use it to diagnose, screen, triage or make any decision about a person's health; anyone worried
> about a skin lesion should see a doctor.

## Intended use

Research on dermoscopic skin-lesion classification ({' vs '.join(label_names)}): reproducing and extending
arXiv:2510.03876, comparing architectures, studying calibration and explanations (Grad-CAM, fusion weights).
Out of scope: any clinical or consumer use.

## Limitations

- **Dataset bias**: public dermoscopy archives (ISIC) come from a few centres and mostly light skin types; the
  performance on other populations, devices and skin types is unknown.
- **Dermoscopic images only**: clinical or smartphone photographs are out of distribution.
- **Class imbalance** (test set: {counts}): look at recall, specificity and PR AUC rather than accuracy.
{scratch}- **Small test set** (n = {summary['n']}): see the width of the confidence intervals.
- {calibration_note}
- **Out-of-distribution images**: {ood_note}

## Data

`{dataset}`. Test set: {counts}. Decision threshold source: {summary['threshold_source']}.

## Training

| setting | value |
|---|---|
{settings_rows}

```bash
{command}
```

## Results

{decision}

### Test set (n = {summary['n']})

{metrics_table(summary)}

95 % confidence intervals: percentile bootstrap over test images.
{validation}
## Calibration and out-of-distribution detection

{calibration_section}

## Usage

```python
from transformers import pipeline

classify = pipeline("image-classification", model="{model_name}", trust_remote_code=True)
classify("lesion.jpg")  # decided label first: [{{"label", "score", "decision", "in_distribution", "ood_score"}}, ...]
```

The pipeline applies this model's decision rule (calibrated probabilities, the decision threshold, the OOD flag). By
hand:

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

model = AutoModelForImageClassification.from_pretrained("{model_name}", trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained("{model_name}", trust_remote_code=True)
inputs = processor(Image.open("lesion.jpg").convert("RGB"), return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)
probs = (outputs.logits / model.config.temperature).softmax(-1)[0]  # calibrated
print({rule})
if outputs.ood_score is not None and float(outputs.ood_score[0]) > model.config.ood_threshold:
    print("outside the training distribution: the prediction is not meaningful")
```

The decision rule lives in `config.json` (`temperature`, `decision_threshold`, `ood_threshold`); this card reports
it but is not read at inference time.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


__all__ = [
    "COMPARISON_METRICS",
    "METRIC_NAMES",
    "PREDICTIONS_FILE",
    "build_model_card",
    "describe_threshold",
    "format_interval",
    "format_number",
    "metrics_table",
    "read_predictions",
    "source_dir_name",
    "write_predictions",
    "write_report",
    "write_source_reports",
]
