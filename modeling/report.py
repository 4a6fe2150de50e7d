"""The evaluation report of a model on one split: `report.md` (metrics with bootstrap intervals, figures),
`report.json` (the same numbers, undefined ones as null) and `predictions.csv` (one row per image, what comparisons
between models read back), for the pooled data and per source; and the lesion-focus section (CAM frame share,
computed by `lesion_focus`).

The statistics are in `metrics.statistics`, the figures in `plots`; the tables here (`metrics_table`, the number
formats) are shared with the model card (`model_card`) and the comparison of runs (`compare`).
"""

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix

from .metrics import compute_classification_metrics
from .metrics.statistics import ECE_BINS, _as_arrays, bootstrap_ci, expected_calibration_error, finite_or_none
from .plots import report_figures, roc_by_source_figure

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


def frame_share_markdown(summary: dict, figure: str | None = None) -> str:
    """The CAM frame share (`lesion_focus.frame_shares` summary) as a report section: what it measures, a table
    pooled, per source and per true label, and the figure of the worst images."""
    size = summary.get("input_size")
    where = f"the {size[0]}×{size[1]} input ({summary['frame_px'][0]} px)" if size else "the input"
    sample = summary.get("sample")
    drawn = (f" A seeded sample (seed {sample['seed']}) of {summary['n'] + summary['n_zero_cam']} of the "
             f"{summary['images']} images, stratified by {sample['stratified_by']}.") if sample else ""
    rows = ["| images | n | mean (95 % CI) | median | share > uniform | all-zero CAMs |", "|---|---|---|---|---|---|"]

    def row(name: str, part: dict) -> str:
        ci = "" if part.get("mean_ci95") is None else f" {format_interval(part['mean_ci95'])}"
        return (f"| {name} | {part['n']} | {format_number(part['mean'])}{ci} | "
                f"{format_number(part['median'])} | {format_number(part['share_above_uniform'])} | "
                f"{part['n_zero_cam']} |")

    groups = [("all", summary), *summary.get("sources", {}).items()]
    for name, part in groups:
        rows.append(row(f"**{name}**" if name == "all" else name, part))
        rows += [row(f"{'' if name == 'all' else f'{name}, '}true {label}", by)
                 for label, by in part.get("by_label", {}).items()]
    lines = ["## Lesion focus: CAM frame share", "",
             f"Share of Grad-CAM mass ({summary['target']} map, for each image's true class, raw: before any min-max "
             f"scaling) in the outer 1/8 of each side of {where}: 43.75 % of the area, so a uniform map scores "
             f"{summary['uniform_share']:.4g}. Lower is better: dermoscopy centres the lesion.{drawn} 95 % CI of "
             "the mean: "
             "percentile bootstrap.", "", *rows, ""]
    lines += lesion_reference_markdown(groups)
    if figure:
        lines += [f"![{Path(figure).stem}]({figure})", ""]
    return "\n".join(lines)


def lesion_reference_markdown(groups: list[tuple[str, dict]]) -> list[str]:
    """Lines of a report subsection on the proxy lesion masks (`lesion_focus.lesion_reference` of each (name,
    summary) group); none when no group had a mask."""
    rows = []
    for name, part in groups:
        ref = part.get("lesion_reference") or {}
        if not ref.get("n"):
            continue
        cam = ref["cam_on_lesion"]
        ci = "" if cam.get("mean_ci95") is None else f" {format_interval(cam['mean_ci95'])}"
        label = f"**{name}**" if name == "all" else name
        rows.append(f"| {label} | {ref['n']} of {ref['n'] + ref['n_left_out']} | "
                    f"{format_number(ref['mask_frame_share']['mean'])} / "
                    f"{format_number(ref['mask_frame_share']['median'])} | {format_number(cam['mean'])}{ci} | "
                    f"{format_number(ref['mask_area'])} | {format_number(ref['lift'], 2)} | "
                    f"{format_number(ref['frame_share_spearman'], 2)} |")
    if not rows:
        return []
    definition = next(part["lesion_reference"]["definition"] for _, part in groups
                      if (part.get("lesion_reference") or {}).get("n"))
    return ["### Against the lesion (proxy masks)", "",
            "What a CAM that followed the lesion would score, without segmentations: the lesion mask's own frame share "
            "(mean / median); the share of each CAM's mass on the lesion against the lesion's share of the area (lift "
            "1: no preference for the lesion); the Spearman correlation of the CAM's frame share with the lesion's. "
            f"Mask: {definition}. A proxy: hair, rulers and vignettes fool it on some images.", "",
            "| images | with a mask and a CAM | lesion's frame share | CAM mass on the lesion (95 % CI) | "
            "lesion's area | lift | Spearman ρ |", "|---|---|---|---|---|---|---|", *rows, "",
            *as_cam_sentence(groups[0][1].get("lesion_reference") or {})]


def as_cam_sentence(reference: dict) -> list[str]:
    """The pooled 'what a lesion-following CAM would score' line (`lesion_as_cam`), if measured."""
    as_cam = reference.get("lesion_as_cam")
    if not as_cam:
        return []
    grid = "×".join(str(n) for n in as_cam["grid"])
    return [f"A CAM that was exactly the lesion mask, at the CAM's own {grid} resolution (averaged onto it and "
            f"upsampled as the CAMs are), would score a frame share of {format_number(as_cam['frame_share'])} and a "
            f"lift of {format_number(as_cam['lift'], 2)} (pooled).", ""]


def append_frame_share_section(report_dir, summary: dict, figure: str | None = None) -> None:
    """Appends `frame_share_markdown` to `report_dir/report.md` (written first by `write_report`)."""
    report_md = Path(report_dir) / "report.md"
    before = report_md.read_text() if report_md.is_file() else ""
    report_md.write_text(before + ("\n" if before else "") + frame_share_markdown(summary, figure))


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


__all__ = [
    "COMPARISON_METRICS",
    "METRIC_NAMES",
    "PREDICTIONS_FILE",
    "append_frame_share_section",
    "describe_threshold",
    "format_interval",
    "format_number",
    "frame_share_markdown",
    "metrics_table",
    "read_predictions",
    "source_dir_name",
    "write_predictions",
    "write_report",
    "write_source_reports",
]
