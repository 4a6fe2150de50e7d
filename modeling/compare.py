"""Compare finished runs on the same images: one table with each model's test metrics and confidence intervals,
paired bootstrap differences from the first model (the test of "does the fusion beat plain ResNet-50?"), and the
cross-source table: every model on every source's test and validation split it was evaluated on, the sources it
never trained on in italics, with paired differences per split (`comparison_table`, `paired_table`,
`cross_source_table`, `write_comparison`) and the command line.

    python -m modeling.compare --output_dir runs/comparison channel=runs/channel none=runs/none spatial=runs/spatial

Each run directory is what `train_hf.py` (or `--do_eval_only`) wrote: `report/` (test) and `report/validation/`,
each with `report.json`, `predictions.csv` and, for several sources, `sources/<source>/`; with `trainer_state.json`
(training runs) the learning curves are plotted too. A name given twice gathers several directories into one model,
e.g. a model trained on one source and its `--do_eval_only --eval_split validation` run on another:

    python -m modeling.compare --output_dir runs/cross both=checkpoints/asff-lite2-isic \
        isic2020=checkpoints/asff-resnet50-isic2020 isic2020=runs/r50-on-isic2019-val
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .data import DataError, source_names
from .metrics.statistics import finite_or_none, paired_bootstrap
from .report import (
    COMPARISON_METRICS,
    PREDICTIONS_FILE,
    format_interval,
    format_number,
    read_predictions,
    source_dir_name,
)
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


def format_difference(entry: dict | None) -> str:
    """One `paired_bootstrap` metric as "+0.012 [−0.004, +0.027]", "–" when undefined."""
    if entry is None or entry["delta"] is None:
        return "–"
    low, high = entry["ci95"]
    return f"{entry['delta']:+.3f}" + ("" if low is None or high is None else f" [{low:+.3f}, {high:+.3f}]")


def paired_table(differences: dict[str, dict], reference: str) -> str:
    """Markdown table of `paired_bootstrap` results, one row per model compared with `reference`."""
    header = ["model − " + reference, *COMPARISON_METRICS]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, difference in differences.items():
        cells = [model]
        cells += [format_difference(difference.get(name)) for name in COMPARISON_METRICS]
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


SPLIT_FOLDERS = {"test": Path("report"), "validation": Path("report", "validation")}  # as train_hf.py writes them
Predictions = tuple[list[str], np.ndarray, np.ndarray]  # ids, labels, probabilities


@dataclass
class Evaluation:
    """One report of a model: on one source's split, or pooled over a run's sources."""

    summary: dict
    predictions: Predictions | None
    folder: Path


def read_evaluation(folder) -> Evaluation:
    """The `report.json` (and `predictions.csv`, when saved) of one report folder."""
    folder = Path(folder)
    summary = json.loads((folder / "report.json").read_text())
    predictions = None
    if (folder / PREDICTIONS_FILE).is_file():
        ids, labels, probs, _ = read_predictions(folder / PREDICTIONS_FILE)
        predictions = (ids, labels, probs)
    return Evaluation(summary, predictions, folder)


def _metrics(run_dir) -> dict:
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _source_names(metrics: dict) -> list[str]:
    """The sources a run's data came from: `metrics.json` "datasets", or the settings' dataset (older runs)."""
    if metrics.get("datasets"):
        return list(metrics["datasets"])
    dataset = (metrics.get("settings") or {}).get("dataset")
    return source_names([dataset] if isinstance(dataset, str) else dataset) if dataset else []


def trained_on(run_dir, _seen: frozenset = frozenset()) -> list[str] | None:
    """The sources the run's model was trained on, including those of the model it was fine-tuned from (its
    `init`); for an evaluation-only run, those of the model it evaluated. Models are followed where they are
    directories holding their `metrics.json`. None when unknown."""
    here = Path(run_dir).resolve()
    metrics = _metrics(run_dir)
    if "train" in metrics or "settings" in metrics:  # a training run (or a release) wrote it
        sources = _source_names(metrics)
        start = (metrics.get("settings") or {}).get("init")
        if isinstance(start, str) and (Path(start) / "metrics.json").is_file() and Path(start).resolve() not in _seen:
            sources = list(dict.fromkeys([*(trained_on(start, _seen | {here}) or []), *sources]))
        return sources or None
    model = metrics.get("model")
    if model and (Path(model) / "metrics.json").is_file() and Path(model).resolve() not in _seen | {here}:
        return trained_on(model, _seen | {here})
    return None


def run_evaluations(run_dir) -> dict[tuple[str, str], Evaluation]:
    """{(source, split): report} for every source and split the run directory holds a report of; a source that
    had no test split and was evaluated whole (`--do_eval_only`) has the split "all images"."""
    metrics = _metrics(run_dir)
    names = _source_names(metrics)
    whole = set(metrics.get("whole_sources") or [])
    found: dict[tuple[str, str], Evaluation] = {}
    for split, folder in SPLIT_FOLDERS.items():
        folder = Path(run_dir) / folder
        if not (folder / "report.json").is_file():
            continue
        if (folder / "sources").is_dir():
            parts = {name: folder / "sources" / source_dir_name(name) for name in names}
        elif len(names) == 1:
            parts = {names[0]: folder}
        else:  # a run from before sources were recorded: its reports are pooled only
            continue
        for name, part in parts.items():
            if (part / "report.json").is_file():
                found[(name, "all images" if split == "test" and name in whole else split)] = read_evaluation(part)
    return found


def _set_name(key: tuple[str, str]) -> str:
    return f"{key[0]} {key[1]}"


def cross_source_table(models: dict[str, dict[tuple[str, str], Evaluation]],
                       trained: dict[str, list[str] | None]) -> str:
    """Markdown table, one row per model: where it was trained, then ROC AUC and accuracy [95 % CI] on every source
    and split any model was evaluated on, in italics on a source the model never trained on."""
    keys = _ordered_sets(models)
    header = ["model", "trained on"]
    for key in keys:
        header += [f"{_set_name(key)} ROC AUC", f"{_set_name(key)} accuracy"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, sets in models.items():
        sources = trained.get(model)
        cells = [model, " + ".join(sources) if sources else "?"]
        for key in keys:
            if key not in sets:
                cells += ["–", "–"]
                continue
            summary = sets[key].summary
            unseen = sources is not None and key[0] not in sources
            for metric in ("roc_auc", "accuracy"):
                value = format_number(summary["metrics"].get(metric))
                ci = format_interval(summary.get("ci95", {}).get(metric), 2)
                text = value if ci == "–" else f"{value} {ci}"
                cells.append(f"*{text}*" if unseen and value != "–" else text)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _ordered_sets(models: dict[str, dict[tuple[str, str], Evaluation]]) -> list[tuple[str, str]]:
    """Every (source, split) of any model: sources in order of appearance, test before validation."""
    keys = list(dict.fromkeys(key for sets in models.values() for key in sets))
    sources = list(dict.fromkeys(source for source, _ in keys))
    order = ["test", "all images", "validation"]
    return sorted(keys, key=lambda key: (sources.index(key[0]), order.index(key[1]) if key[1] in order else 9))


def paired_by_set(models: dict[str, dict[tuple[str, str], Evaluation]], reference: str,
                  n_resamples: int = 2000) -> dict[str, dict[tuple[str, str], dict]]:
    """Each model minus `reference` on every (source, split) both were evaluated on with saved predictions
    (`paired_bootstrap`, each model at its own threshold). Where they hold other images under the same name (e.g. a
    split carved with another seed or test fraction), nothing is paired: the entry is {"same_images": False}."""
    differences: dict[str, dict[tuple[str, str], dict]] = {}
    for name, sets in models.items():
        if name == reference:
            continue
        differences[name] = {}
        for key, evaluation in sets.items():
            base = models[reference].get(key)
            if base is None or base.predictions is None or evaluation.predictions is None:
                continue
            difference = _paired(base, evaluation, n_resamples)
            differences[name][key] = {"same_images": False} if difference is None else difference
    return differences


def _paired(base: Evaluation, other: Evaluation, n_resamples: int) -> dict | None:
    """`other` − `base` on the same images, or None when they are not the same images."""
    ids, labels, probs = base.predictions
    other_ids, other_labels, other_probs = other.predictions
    paired = paired_ids(list(ids), list(other_ids))
    if paired is None:
        return None
    order = {sample: i for i, sample in enumerate(paired[0])}
    index = np.array([order[sample] for sample in paired[1]])
    if not np.array_equal(labels[index], other_labels):
        raise DataError(f"{other.folder} and {base.folder} disagree on the labels of the same images")
    return paired_bootstrap(labels[index], other_probs, probs[index], other.summary["threshold"],
                            base.summary["threshold"], n_resamples=n_resamples)


def paired_by_set_table(differences: dict[str, dict[tuple[str, str], dict]], reference: str,
                        keys: list[tuple[str, str]], metric: str = "roc_auc") -> str:
    """Markdown table of `paired_by_set`: one row per model, one column per (source, split), `metric`'s difference
    [95 % CI]."""
    header = [f"model − {reference}", *(_set_name(key) for key in keys)]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, sets in differences.items():
        cells = [name]
        for key in keys:
            entry = sets.get(key) or {}
            cells.append("other images" if entry.get("same_images") is False else format_difference(entry.get(metric)))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _set_entry(key: tuple[str, str], evaluation: Evaluation) -> dict:
    summary = evaluation.summary
    return {"source": key[0], "split": key[1], "n": summary["n"], "threshold": summary["threshold"],
            **{metric: summary["metrics"].get(metric) for metric in ("roc_auc", "accuracy", "recall", "specificity")},
            "ci95": {metric: summary.get("ci95", {}).get(metric) for metric in ("roc_auc", "accuracy")},
            "report": str(evaluation.folder)}


def cross_source_section(models: dict[str, dict[tuple[str, str], Evaluation]], trained: dict[str, list[str] | None],
                         n_resamples: int = 2000) -> tuple[str, dict]:
    """The comparison's per-source part (markdown and JSON): `cross_source_table` and, for two or more models,
    `paired_by_set` from the first one."""
    keys = _ordered_sets(models)
    text = ("\n## Per source and split (cross-source)\n\n" + cross_source_table(models, trained) + "\n\n"
            "Each model at its own decision threshold, [95 % bootstrap CI]. *Italics*: a source the model was not "
            "trained on (nor the model it was fine-tuned from). A validation split that chose a model's epoch or "
            "threshold is slightly optimistic for it.\n")
    payload: dict = {"sets": [_set_name(key) for key in keys], "models": {}}
    for name, sets in models.items():
        payload["models"][name] = {"trained_on": trained.get(name),
                                   "sets": {_set_name(key): _set_entry(key, e) for key, e in sets.items()}}
    if len(models) > 1:
        reference = next(iter(models))
        differences = paired_by_set(models, reference, n_resamples)
        payload["paired_vs"] = reference
        payload["paired_differences"] = {name: {_set_name(key): value for key, value in sets.items()}
                                         for name, sets in differences.items()}
        text += (f"\n### ROC AUC, paired differences from `{reference}` per split\n\n"
                 f"{paired_by_set_table(differences, reference, keys)}\n\n[95 % paired percentile-bootstrap CI, "
                 f"{n_resamples} resamples of the same images]; – where the two were not both evaluated there; "
                 "*other images*: a split of the same name that holds other images (carved with other settings), "
                 "so its cells in the table above are not comparable. `comparison.json` has every metric.\n")
    return text, payload


def write_comparison(out_dir, summaries: dict[str, dict], predictions: dict[str, Predictions] | None = None,
                     n_resamples: int = 2000, per_source: dict[str, dict[tuple[str, str], Evaluation]] | None = None,
                     trained: dict[str, list[str] | None] | None = None) -> dict:
    """Writes `comparison.md` and `comparison.json`: one row per model (`summaries`, pooled test reports from
    `write_report`) and, when every model's test `predictions` (ids, labels, probabilities) are given, paired
    bootstrap differences of each model from the first one on the same images; with `per_source` ({model: {(source,
    split): Evaluation}}, `run_evaluations`) covering more than one source or split, the cross-source section
    (`trained`: each model's training sources). Returns the JSON written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = (f"# Model comparison (test set)\n\n{comparison_table(summaries)}\n\n"
            "Values at each model's decision threshold, [95 % bootstrap CI].\n")
    payload: dict = {"models": summaries}
    if predictions and len(summaries) > 1 and set(predictions) >= set(summaries):
        reference, *others = list(summaries)
        base = Evaluation(summaries[reference], predictions[reference], Path(reference))
        differences = {}
        for name in others:
            difference = _paired(base, Evaluation(summaries[name], predictions[name], Path(name)), n_resamples)
            if difference is None:
                raise DataError(f"{name} and {reference} were not evaluated on the same images")
            differences[name] = difference
        payload["paired_vs"] = reference
        payload["paired_differences"] = differences
        text += (f"\n## Paired differences from `{reference}` (same {len(base.predictions[0])} images)\n\n"
                 f"{paired_table(differences, reference)}\n\nEach model at its own threshold; [95 % paired "
                 f"percentile-bootstrap CI, {n_resamples} resamples of images]. An interval that contains 0 is no "
                 "measurable difference.\n")
    if per_source and len(_ordered_sets(per_source)) > 1:
        section, payload["cross_source"] = cross_source_section(per_source, trained or {}, n_resamples)
        text += section
    (out_dir / "comparison.md").write_text(text)
    payload = finite_or_none(payload)
    (out_dir / "comparison.json").write_text(json.dumps(payload, indent=2) + "\n")
    return payload


def read_run(run_dir) -> tuple[dict, tuple | None]:
    """A run's pooled test summary and, when saved, its test predictions (ids, labels, probabilities)."""
    report = Path(run_dir) / SPLIT_FOLDERS["test"]
    if not (report / "report.json").is_file():
        raise UsageError(f"{run_dir} has no report/report.json: is it a finished run directory?")
    evaluation = read_evaluation(report)
    return evaluation.summary, evaluation.predictions


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


def compare_runs(output_dir, runs: dict[str, str | Path | list[str | Path]], n_resamples: int = 2000) -> dict:
    """Writes `comparison.md`/`comparison.json` into `output_dir` for `runs` ({name: run directory, or several
    directories of one model, e.g. its training run and an evaluation-only run on another source}); the first run
    is the reference of the paired differences (the pooled ones need every model's test predictions)."""
    summaries, predictions, per_source, trained = {}, {}, {}, {}
    candidates: dict[str, list[tuple[dict, Predictions | None]]] = {}  # each model's pooled test reports
    for name, given in runs.items():
        folders = [Path(folder) for folder in (given if isinstance(given, list | tuple) else [given])]
        per_source[name] = {}
        for folder in folders:
            if not folder.is_dir():
                raise UsageError(f"{folder}: no such run directory")
            found = run_evaluations(folder)
            if twice := sorted(set(found) & set(per_source[name])):
                raise UsageError(f"{name}: {', '.join(map(_set_name, twice))} evaluated in two of its directories "
                                 f"({', '.join(map(str, folders))}); keep one")
            per_source[name].update(found)
            if (folder / SPLIT_FOLDERS["test"] / "report.json").is_file():
                candidates.setdefault(name, []).append(read_run(folder))
            trained[name] = trained.get(name) or trained_on(folder)  # the first directory that knows
        if name not in candidates and not per_source[name]:
            raise UsageError(f"{', '.join(map(str, folders))}: no report/report.json or "
                             "report/validation/report.json: is it a finished run directory?")
    # The test table: for a model with several pooled test reports, the one on the reference's images.
    reference = next(iter(candidates.get(next(iter(runs)), [])), (None, None))[1]
    for name, found in candidates.items():
        pick = next((c for c in found if reference is not None and c[1] is not None
                     and paired_ids(list(reference[0]), list(c[1][0])) is not None), found[0])
        summaries[name] = pick[0]
        if pick[1] is not None:
            predictions[name] = pick[1]
    payload = write_comparison(output_dir, summaries, predictions if len(predictions) == len(summaries) else None,
                               n_resamples=n_resamples, per_source=per_source, trained=trained)
    if missing := [name for name in runs if name not in summaries]:
        with open(Path(output_dir) / "comparison.md", "a") as handle:
            handle.write(f"\nNot in the test table (no pooled test report): {', '.join(missing)}.\n")
    first = {name: (given[0] if isinstance(given, list | tuple) else given) for name, given in runs.items()}
    if plot_learning_curves(Path(output_dir) / "learning_curves.png", first):
        with open(Path(output_dir) / "comparison.md", "a") as handle:
            handle.write("\n![learning curves](learning_curves.png)\n")
    return payload


def parse_runs(arguments: list[str]) -> dict[str, list[str]]:
    """NAME=RUN_DIR (or RUN_DIR, named after its folder) arguments, in order; a name given again adds a directory to
    that model."""
    runs: dict[str, list[str]] = {}
    for argument in arguments:
        name, folder = argument.split("=", 1) if "=" in argument else (Path(argument).name, argument)
        runs.setdefault(name, []).append(folder)
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR (or RUN_DIR, named after its folder); first = reference; "
                        "a NAME given again adds that directory's reports to the same model")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--n_resamples", type=int, default=2000)
    args = parser.parse_args(argv)
    try:
        compare_runs(args.output_dir, parse_runs(args.runs), args.n_resamples)
    except (UsageError, DataError) as error:  # not run directories, or runs on different images
        parser.error(str(error))
    print((Path(args.output_dir) / "comparison.md").read_text())


if __name__ == "__main__":
    main()
