"""Compare finished runs on the same test images: one table with each model's metrics and confidence intervals, and
paired bootstrap differences from the first model (the test of "does the fusion beat plain ResNet-50?"): the tables
(`comparison_table`, `paired_table`, `write_comparison`) and the command line.

    python -m modeling.compare --output_dir runs/comparison channel=runs/channel none=runs/none spatial=runs/spatial

Each run directory is what `train_hf.py` (or `--do_eval_only`) wrote: `report/report.json` and
`report/predictions.csv`; with `trainer_state.json` (training runs) the learning curves are plotted too.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .data import DataError
from .metrics.statistics import finite_or_none, paired_bootstrap
from .report import COMPARISON_METRICS, PREDICTIONS_FILE, format_interval, format_number, read_predictions
from .training import UsageError


def comparison_table(summaries: dict[str, dict]) -> str:
    """Markdown table, one row per model: each metric as "value [CI low, CI high]" at the model's own threshold."""
    header = ["model", "threshold", *COMPARISON_METRICS]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, summary in summaries.items():
        cells = [model, format_number(summary.get("threshold"))]
        for name in COMPARISON_METRICS:
            value = summary.get("ece") if name == "ece" else summary.get("metrics", {}).get(name)
            ci = summary.get("ci95", {}).get(name)
            cells.append(format_number(value) + ("" if format_interval(ci) == "–" else " " + format_interval(ci, 2)))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def paired_table(differences: dict[str, dict], reference: str) -> str:
    """Markdown table of `paired_bootstrap` results, one row per model compared with `reference`."""
    header = ["model − " + reference, *COMPARISON_METRICS]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, difference in differences.items():
        cells = [model]
        for name in COMPARISON_METRICS:
            entry = difference.get(name)
            if entry is None or entry["delta"] is None:
                cells.append("–")
                continue
            low, high = entry["ci95"]
            interval = "" if low is None or high is None else f" [{low:+.3f}, {high:+.3f}]"
            cells.append(f"{entry['delta']:+.3f}{interval}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _without_source(ids: list[str]) -> list[str]:
    """`ids` without the folder they all start with: a run on several sources names its images
    `<source>/<split>/<label>/<file>`, a run on one source `<split>/<label>/<file>`."""
    heads = {sample.split("/", 1)[0] for sample in ids}
    if len(heads) != 1 or not all("/" in sample for sample in ids):
        return ids
    return [sample.split("/", 1)[1] for sample in ids]


def paired_ids(ids: list[str], other_ids: list[str]) -> tuple[list[str], list[str]] | None:
    """The two runs' image ids in one naming, so that a run on one source and a run on several that was evaluated on
    that source's images pair up; None when they are not the same images. The folder is dropped from one side only:
    dropped from both, two sources' `test/benign/1.jpg` would pair."""
    for a, b in ((ids, other_ids), (_without_source(ids), other_ids), (ids, _without_source(other_ids))):
        if sorted(a) == sorted(b):
            return a, b
    return None


def write_comparison(out_dir, summaries: dict[str, dict],
                     predictions: dict[str, tuple[list[str], np.ndarray, np.ndarray]] | None = None,
                     n_resamples: int = 2000) -> dict:
    """Writes `comparison.md` and `comparison.json`: one row per model (`summaries`, from `write_report`) and, when
    every model's test `predictions` (ids, labels, probabilities) are given, paired bootstrap differences of each
    model from the first one on the same images. Returns the JSON written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = (f"# Model comparison (test set)\n\n{comparison_table(summaries)}\n\n"
            "Values at each model's decision threshold, [95 % bootstrap CI].\n")
    payload = {"models": summaries}
    if predictions and len(summaries) > 1 and set(predictions) >= set(summaries):
        reference, *others = list(summaries)
        ids, labels, probs = predictions[reference]
        differences = {}
        for name in others:
            other_ids, other_labels, other_probs = predictions[name]
            paired = paired_ids(list(ids), list(other_ids))
            if paired is None:
                raise DataError(f"{name} and {reference} were not evaluated on the same images")
            order = {sample: i for i, sample in enumerate(paired[0])}
            index = np.array([order[sample] for sample in paired[1]])
            if not np.array_equal(labels[index], other_labels):
                raise DataError(f"{name} and {reference} disagree on the labels of the same images")
            differences[name] = paired_bootstrap(labels[index], other_probs, probs[index],
                                                 summaries[name]["threshold"], summaries[reference]["threshold"],
                                                 n_resamples=n_resamples)
        payload["paired_vs"] = reference
        payload["paired_differences"] = differences
        text += (f"\n## Paired differences from `{reference}` (same {len(ids)} images)\n\n"
                 f"{paired_table(differences, reference)}\n\nEach model at its own threshold; [95 % paired "
                 f"percentile-bootstrap CI, {n_resamples} resamples of images]. An interval that contains 0 is no "
                 "measurable difference.\n")
    (out_dir / "comparison.md").write_text(text)
    payload = finite_or_none(payload)
    (out_dir / "comparison.json").write_text(json.dumps(payload, indent=2) + "\n")
    return payload


def read_run(run_dir) -> tuple[dict, tuple | None]:
    """A run's test summary and, when saved, its test predictions (ids, labels, probabilities)."""
    report = Path(run_dir) / "report"
    if not (report / "report.json").is_file():
        raise UsageError(f"{run_dir} has no report/report.json: is it a finished run directory?")
    summary = json.loads((report / "report.json").read_text())
    predictions = None
    if (report / PREDICTIONS_FILE).is_file():
        ids, labels, probs, _ = read_predictions(report / PREDICTIONS_FILE)
        predictions = (ids, labels, probs)
    return summary, predictions


def plot_learning_curves(out_path, runs: dict[str, str | Path], metric: str = "roc_auc") -> bool:
    """Training loss and validation `metric` against epoch for each run that saved its `trainer_state.json`."""
    histories = {}
    for name, run_dir in runs.items():
        state = Path(run_dir) / "trainer_state.json"
        if state.is_file():
            histories[name] = json.loads(state.read_text())["log_history"]
    if not histories:
        return False
    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)  # Agg, without touching pyplot's global backend
    loss_axes, metric_axes = figure.subplots(1, 2)
    for name, history in histories.items():
        train = [(e["epoch"], e["loss"]) for e in history if "loss" in e]
        evaluated = [(e["epoch"], e[f"eval_{metric}"]) for e in history if f"eval_{metric}" in e]
        if train:
            loss_axes.plot(*zip(*train, strict=True), label=name)
        if evaluated:
            metric_axes.plot(*zip(*evaluated, strict=True), marker=".", label=name)
    loss_axes.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    metric_axes.set(xlabel="epoch", ylabel=metric, title=f"Validation {metric}")
    for axes in (loss_axes, metric_axes):
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:  # a very short run may log no training loss
            axes.legend()
    figure.savefig(out_path, dpi=110)
    return True


def compare_runs(output_dir, runs: dict[str, str | Path], n_resamples: int = 2000) -> dict:
    """Writes `comparison.md`/`comparison.json` into `output_dir` for `runs` ({name: run directory}); the first run
    is the reference of the paired differences (which need every run's predictions)."""
    summaries, predictions = {}, {}
    for name, run_dir in runs.items():
        summaries[name], saved = read_run(run_dir)
        if saved is not None:
            predictions[name] = saved
    payload = write_comparison(output_dir, summaries, predictions if len(predictions) == len(runs) else None,
                               n_resamples=n_resamples)
    if plot_learning_curves(Path(output_dir) / "learning_curves.png", runs):
        with open(Path(output_dir) / "comparison.md", "a") as handle:
            handle.write("\n![learning curves](learning_curves.png)\n")
    return payload


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR (or RUN_DIR, named after its folder); first = reference")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--n_resamples", type=int, default=2000)
    args = parser.parse_args(argv)
    runs = dict(run.split("=", 1) if "=" in run else (Path(run).name, run) for run in args.runs)
    try:
        compare_runs(args.output_dir, runs, args.n_resamples)
    except (UsageError, DataError) as error:  # not run directories, or runs on different images
        parser.error(str(error))
    print((Path(args.output_dir) / "comparison.md").read_text())


if __name__ == "__main__":
    main()
