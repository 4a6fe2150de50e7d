"""Tables of a recipes/gpu_sweep.py session: cross-source results, the fusion claim with paired bootstrap differences,
the ablations, the fine-tuning recipe and the learned fusion weights.

    python recipes/sweep_report.py results/gpu-sweep/raw --out results/gpu-sweep   # or the raw/*.json.gz files

Every probability is the softmax of the run's logits (no temperature); each run's decision threshold is chosen on
the validation split(s) of the sources it trained on (Youden), never on test. ROC AUC needs no threshold. Each
interval is a 95 % percentile bootstrap over images (modeling.metrics.statistics)."""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path

import numpy as np
from scipy.special import softmax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling.lesion_focus import summarise  # noqa: E402
from modeling.metrics import compute_classification_metrics  # noqa: E402
from modeling.metrics.statistics import bootstrap_ci, choose_threshold, paired_bootstrap  # noqa: E402
from modeling.report import format_interval, format_number  # noqa: E402

SETS = {"isic2020-part test": ("test", "isic2020-part"), "isic2019-part validation": ("validation", "isic2019-part"),
        "isic2020-part validation": ("validation", "isic2020-part")}
TRAINED_ON = {("isic2020-part",): "isic2020-part", ("isic2019-part",): "isic2019-part",
              ("isic2020-part", "isic2019-part"): "both"}


def result_files(paths: list[str]) -> list[Path]:
    """The sweep's result files: each path a `.json.gz` file, or a folder of them (e.g. `results/gpu-sweep/raw`)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob("*.json.gz"))
            if not found:
                raise ValueError(f"{path} holds no *.json.gz result files of recipes/gpu_sweep.py")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{path}: no such file or folder")
    return files


def load(paths: list[str]) -> dict[str, dict]:
    """Every run of the sweep's result files (or folders of them), by name."""
    runs: dict[str, dict] = {}
    for path in result_files(paths):
        try:
            runs.update(json.loads(zlib.decompress(path.read_bytes()))["runs"])
        except (zlib.error, json.JSONDecodeError, KeyError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not a result file of recipes/gpu_sweep.py ({error!r})") from error
    return runs


def rows(run: dict, split: str, source: str) -> np.ndarray:
    return np.flatnonzero((np.array(run["splits"]) == split) & (np.array(run["sources"]) == source))


def probs(run: dict) -> np.ndarray:
    return softmax(np.asarray(run["logits"], dtype=np.float64), axis=1)


def threshold(run: dict) -> float:
    index = np.concatenate([rows(run, "validation", s) for s in run["run"]["sources"]])
    return choose_threshold(np.asarray(run["labels"])[index], probs(run)[index], "youden")


def evaluate(run: dict) -> dict:
    labels, p, t = np.asarray(run["labels"]), probs(run), threshold(run)
    result = {"threshold": t}
    for name, (split, source) in SETS.items():
        index = rows(run, split, source)
        ci = bootstrap_ci(labels[index], p[index], threshold=t, n_resamples=1000)
        point = compute_classification_metrics(p[index], labels[index], threshold=t)
        result[name] = {"n": int(len(index)), "roc_auc": point["roc_auc"], "roc_auc_ci95": ci["roc_auc"],
                        "accuracy": point["accuracy"], "accuracy_ci95": ci["accuracy"],
                        "sensitivity": point["recall"], "specificity": point["specificity"]}
    shares = summarise(np.asarray(run["frame_share_test"], dtype=float))  # NaN (an all-zero CAM) left out
    result["frame_share"] = {key: shares[key] for key in ("n", "mean", "median", "mean_ci95")}
    return result


def cell(metrics: dict, name: str, key: str = "roc_auc") -> str:
    m = metrics[name]
    return f"{format_number(m[key])} {format_interval(m[key + '_ci95'], 2)}"


def difference(a: dict, b: dict, set_name: str, metric: str = "roc_auc") -> str:
    split, source = SETS[set_name]
    index = rows(a, split, source)
    if [a["ids"][i] for i in index] != [b["ids"][i] for i in rows(b, split, source)]:
        raise ValueError("the two runs were evaluated on different images")
    d = paired_bootstrap(np.asarray(a["labels"])[index], probs(a)[index], probs(b)[rows(b, split, source)],
                         threshold(a), threshold(b), n_resamples=2000)[metric]
    return f"{d['delta']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


BACKBONES = {"resnet50": "ResNet-50", "lite0": "EfficientNet-Lite0", "lite1": "EfficientNet-Lite1",
             "lite2": "EfficientNet-Lite2"}


def model_name(run: dict) -> str:
    r = run["run"]
    focus = r.get("focus", 0.0)  # sessions before the lesion-focus runs did not record it
    return f"{BACKBONES[r['backbone']]} {r['fusion']}" + (f" + lesion focus {focus:g}" if focus else "")


def init(run: dict) -> str:
    r = run["run"]
    return r["init_from"] or ("scratch" if r["backbone"] == "resnet50" else "ImageNet")


def average_runs(runs: list[dict]) -> dict:
    """Seeds of one recipe as one model: the mean of their probabilities (as log-probabilities, so that `probs` gives
    it back), on the same images."""
    if any(r["ids"] != runs[0]["ids"] for r in runs):
        raise ValueError("the runs were evaluated on different images")
    mean = np.mean([probs(r) for r in runs], axis=0)
    return {**runs[0], "logits": np.log(np.clip(mean, 1e-300, None)).tolist()}


def describe(run: dict) -> str:
    r = run["run"]
    epochs = f"{run['best_epoch']}/{r['epochs']}" + (" (stopped by the time limit)" if run["stopped_early"] else "")
    return epochs


def tables(runs: dict[str, dict]) -> str:
    metrics = {name: evaluate(run) for name, run in runs.items()}
    out = []
    head = ("| model | init | trained on | best epoch | isic2020-part test ROC AUC | isic2020-part test acc. | "
            "isic2019-part val. ROC AUC | isic2019-part val. acc. | CAM frame share (2020 test) |\n"
            "|---|---|---|---|---|---|---|---|---|")
    out += ["## Cross-source results", "",
            "Same recipe per backbone; best epoch chosen on the validation split(s) of the training source(s) only. "
            "A source not trained on is unseen (its cells in *italics*). The isic2019-part validation split also "
            "chose the epoch of runs trained on it, so its numbers there are slightly optimistic.", "", head]
    order = [n for n in runs if runs[n]["run"]["seed"] == 1 and not any(
        x in n for x in ("nocc", "standardaug", "squash", "finetune", "scratch10"))]
    order.sort(key=lambda n: (runs[n]["run"]["backbone"], runs[n]["run"]["fusion"], len(runs[n]["run"]["sources"]),
                              runs[n]["run"]["sources"][0]))
    for name in order:
        r, m = runs[name]["run"], metrics[name]
        trained = TRAINED_ON[tuple(r["sources"])]
        c2020 = [cell(m, "isic2020-part test"), cell(m, "isic2020-part test", "accuracy")]
        c2019 = [cell(m, "isic2019-part validation"), cell(m, "isic2019-part validation", "accuracy")]
        if "isic2020-part" not in r["sources"]:
            c2020 = [f"*{c}*" for c in c2020]
        if "isic2019-part" not in r["sources"]:
            c2019 = [f"*{c}*" for c in c2019]
        fs = m["frame_share"]
        out.append(f"| {model_name(runs[name])} | {init(runs[name])} | {trained} | {describe(runs[name])} | "
                   + " | ".join(c2020 + c2019) + f" | {fs['mean']:.3f} [{fs['mean_ci95'][0]:.2f}, "
                   f"{fs['mean_ci95'][1]:.2f}] |")

    comparable = dict(runs)
    for recipe in ("lite2-both-channel", "lite2-both-none"):  # the seed means, where all three seeds ran
        seeds = [f"{recipe}-s{seed}" for seed in (1, 2, 3)]
        if all(name in runs for name in seeds):
            comparable[f"{recipe}-mean3"] = average_runs([runs[name] for name in seeds])

    def pairs(title: str, note: str, comparisons: list[tuple[str, str, str]], sets=("isic2020-part test",
                                                                                      "isic2019-part validation")):
        present = [(label, a, b) for label, a, b in comparisons if a in comparable and b in comparable]
        if not present:
            return
        out.extend(["", f"## {title}", "", note, "",
                    "| comparison | " + " | ".join(f"Δ ROC AUC, {s}" for s in sets) + " | "
                    + " | ".join(f"Δ acc., {s}" for s in sets) + " |",
                    "|---|" + "---|" * (2 * len(sets))])
        for label, a, b in present:
            out.append(f"| {label} | " + " | ".join(difference(comparable[a], comparable[b], s) for s in sets)
                       + " | " + " | ".join(difference(comparable[a], comparable[b], s, "accuracy") for s in sets)
                       + " |")

    pairs("The fusion claim, paired", "A minus B on the same images (paired bootstrap over images, 2,000 "
          "resamples); an interval that holds 0 is no evidence either way.", [
              ("Lite0 (ImageNet), ISIC-2020: channel − none, seed 1", "lite0-2020-channel-s1", "lite0-2020-none-s1"),
              ("Lite0 (ImageNet), ISIC-2020: channel − none, seed 2", "lite0-2020-channel-s2", "lite0-2020-none-s2"),
              ("Lite0 (ImageNet), ISIC-2020: spatial − none, seed 1", "lite0-2020-spatial-s1", "lite0-2020-none-s1"),
              ("Lite0 (ImageNet), ISIC-2020: spatial − none, seed 2", "lite0-2020-spatial-s2", "lite0-2020-none-s2"),
              ("Lite0 (ImageNet), both: channel − none, seed 1", "lite0-both-channel", "lite0-both-none"),
              ("Lite0 (ImageNet), both: channel − none, seed 2", "lite0-both-channel-s2", "lite0-both-none-s2"),
              ("Lite0 (ImageNet), both: spatial − none, seed 1", "lite0-both-spatial", "lite0-both-none"),
              *[(f"Lite2 (ImageNet), both: channel − none, seed {seed}", f"lite2-both-channel-s{seed}",
                 f"lite2-both-none-s{seed}") for seed in (1, 2, 3)],
              ("Lite2 (ImageNet), both: channel − none, mean of seeds 1–3 (probabilities averaged)",
               "lite2-both-channel-mean3", "lite2-both-none-mean3"),
              ("Lite2 (ImageNet), both: spatial − none, seed 1", "lite2-both-spatial-s1", "lite2-both-none-s1"),
              ("ResNet-50 (scratch), ISIC-2020: channel − none", "r50-2020-channel", "r50-2020-none"),
              ("ResNet-50 (scratch), ISIC-2019: channel − none", "r50-2019-channel", "r50-2019-none"),
              ("ResNet-50 (scratch), both: channel − none", "r50-both-channel", "r50-both-none"),
          ])
    pairs("Ablations (EfficientNet-Lite0, ImageNet, both sources, channel fusion)",
          "Each row changes one thing of the base recipe (Shades-of-Gray colour constancy, dermoscopy augmentation, "
          "shortest edge + centre crop) and is compared with the base run of the same seed; the last row is the "
          "base recipe with another seed, the size of a difference that means nothing.", [
              ("no colour constancy − base", "lite0-both-channel-nocc", "lite0-both-channel"),
              ("standard augmentation − base (dermoscopy)", "lite0-both-channel-standardaug", "lite0-both-channel"),
              ("squash (whole image) − base (crop)", "lite0-both-channel-squash", "lite0-both-channel"),
              ("base seed 2 − base seed 1", "lite0-both-channel-s2", "lite0-both-channel"),
          ])
    pairs("The lesion-focus loss from the start (EfficientNet-Lite2, ImageNet, both sources, channel fusion)",
          "The same recipe with the lesion-focus term (coefficient 0.5: the share of the true class's Grad-CAM "
          "evidence outside the proxy lesion mask) added to the loss from the first step, minus the run without it "
          "of the same seed.", [
              ("lesion focus 0.5 − none, seed 1", "lite2-both-channel-focus", "lite2-both-channel-s1"),
              ("lesion focus 0.5 − none, seed 2", "lite2-both-channel-focus-s2", "lite2-both-channel-s2"),
          ])
    pairs("Fine-tuning onto a new source (ResNet-50, isic2019-part)",
          "Fine-tuning = the ISIC-2020 model of the table above (r50-2020-channel) trained 10 more epochs on "
          "isic2019-part at lr 3e-4; scratch = the same 10 epochs from random weights at lr 1e-3; scratch 25 = the "
          "table's isic2019-part run (2.5× the budget).", [
              ("fine-tuned (10 ep) − scratch (10 ep)", "r50-2019-finetune-channel", "r50-2019-scratch10-channel"),
              ("fine-tuned (10 ep) − scratch (25 ep)", "r50-2019-finetune-channel", "r50-2019-channel"),
          ], sets=("isic2019-part validation", "isic2020-part test"))
    out += ["", "## Every run", "", "| run | trained on | init | fusion | colour constancy | augmentation | resize | "
            "epochs (best/run) | lr | train s | isic2020-part val. ROC AUC | isic2020-part test ROC AUC | "
            "isic2019-part val. ROC AUC | frame share |", "|---|" + "---|" * 13]
    for name, run in runs.items():
        r, m = run["run"], metrics[name]
        fusion = r["fusion"] + (f" + focus {r['focus']:g}" if r.get("focus") else "")
        out.append(f"| {name} | {TRAINED_ON[tuple(r['sources'])]} | {init(run)} | {fusion} | "
                   f"{'yes' if r['color_constancy'] else 'no'} | {r['augmentation']} | {r['resize']} | "
                   f"{describe(run)} | {r['lr']:g} | {run['train_s']:.0f} | "
                   f"{cell(m, 'isic2020-part validation')} | {cell(m, 'isic2020-part test')} | "
                   f"{cell(m, 'isic2019-part validation')} | {m['frame_share']['mean']:.3f} |")
    out += ["", "## Fusion weights", "", "Channel fusion: a softmax over the fused channels weighs the low level (w) "
            "against the high level (1 − w), so each w is about 1/C unless the softmax concentrates. Averaged over "
            "the evaluated images (isic2020-part validation + test, isic2019-part validation).", "",
            "| run | channels C | largest w (mean / median) | effective channels exp(H) | images sharing the top "
            "channel |", "|---|---|---|---|---|"]
    for name, run in runs.items():
        f = run.get("fusion")
        if f and "channels" in f:
            out.append(f"| {name} | {f['channels']} | {f['max_weight_mean']:.3f} / {f['max_weight_median']:.3f} | "
                       f"{f['effective_channels_mean']:.1f} | {f['top_channel_mode_share']:.2f} |")
    out += ["", "| run (spatial fusion) | mean share of the low level | its spread over pixels (std) |",
            "|---|---|---|"]
    for name, run in runs.items():
        f = run.get("fusion")
        if f and "low_level_share_mean" in f:
            out.append(f"| {name} | {f['low_level_share_mean']:.3f} | {f['low_level_share_std_over_pixels']:.3f} |")
    return "\n".join(out) + "\n", metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="the sweep's *.json.gz result files, or folders of them")
    parser.add_argument("--out", default="results/gpu-sweep")
    args = parser.parse_args(argv)
    try:
        runs = load(args.results)
    except ValueError as error:
        parser.error(str(error))
    text, metrics = tables(runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text(text)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(text)


if __name__ == "__main__":
    main()
