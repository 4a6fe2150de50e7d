"""Compare finished runs on the same test images: one table with each model's metrics and confidence intervals, and
paired bootstrap differences from the first model (the test of "does the fusion beat plain ResNet-50?").

    python -m modeling.compare --output_dir runs/comparison channel=runs/channel none=runs/none spatial=runs/spatial

Each run directory is what `train_hf.py` (or `--do_eval_only`) wrote: `report/report.json` and
`report/predictions.csv`; with `trainer_state.json` (training runs) the learning curves are plotted too.
"""

import argparse
import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .report import PREDICTIONS_FILE, read_predictions, write_comparison


def read_run(run_dir) -> tuple[dict, tuple | None]:
    """A run's test summary and, when saved, its test predictions (ids, labels, probabilities)."""
    report = Path(run_dir) / "report"
    if not (report / "report.json").is_file():
        raise ValueError(f"{run_dir} has no report/report.json: is it a finished run directory?")
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
    except ValueError as error:
        parser.error(str(error))
    print((Path(args.output_dir) / "comparison.md").read_text())


if __name__ == "__main__":
    main()
