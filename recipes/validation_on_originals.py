"""Scores model directories on the ORIGINAL validation images of both sources (the splits of `train_hf.py --dataset
isic2020-part isic2019-part --drop_duplicates true --near_duplicate_distance 4`), each with its saved processor: the
per-source ROC AUC and their mean (what chooses releases), and paired differences between named models.

    python recipes/validation_on_originals.py DIR [DIR ...] [--pairs A:B ...] [--out FILE.json]

Why: a device sweep trains and selects on the images of its pack (re-encoded to fit the device's limit), and a network
can learn a codec change; its models are chosen for release only on the original images (RESULTS.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling.metrics.statistics import paired_bootstrap  # noqa: E402
from modeling.selection import validation_scores, validation_set  # noqa: E402

SOURCES = ["../shared/data/isic2020-part", "../shared/data/isic2019-part"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--dataset", nargs="+", default=SOURCES)
    parser.add_argument("--pairs", nargs="*", default=[], help="A:B: model A minus model B (directory names)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data = validation_set(args.dataset)
    sources, labels = data.sources, data.labels
    probs, scores = {}, {}
    for folder in args.models:
        probs[folder.name], scores[folder.name] = validation_scores(folder, data)
        print(folder.name, json.dumps({k: round(v, 4) for k, v in scores[folder.name].items()}), flush=True)
    differences = {}
    for pair in args.pairs:
        a, b = pair.split(":", 1)
        cells = {}
        for source in np.unique(sources):
            index = sources == source
            stacked = [np.stack([1 - probs[m][index], probs[m][index]], 1) for m in (a, b)]
            roc = paired_bootstrap(labels[index], *stacked)["roc_auc"]
            cells[source] = {"difference": roc["delta"], "ci95": roc["ci95"]}
        differences[f"{a} - {b}"] = cells
        print(f"{a} - {b}", json.dumps({s: f"{c['difference']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
                                        for s, c in cells.items()}), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"roc_auc": scores, "paired_roc_auc": differences, "n": {
            s: int((sources == s).sum()) for s in np.unique(sources)}}, indent=1))


if __name__ == "__main__":
    main()
