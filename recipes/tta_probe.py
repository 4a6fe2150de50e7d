"""Scores test-time augmentation on the ORIGINAL validation images of both sources: the per-source ROC AUC of the
single view and of the view subsets below (probabilities averaged, as `--tta` does), and paired differences against
the single view.

    python recipes/tta_probe.py checkpoints/asff-lite2-isic --out results/tta/probe.json

The subsets index `modeling.prediction.tta_views` (4 rotations, then the same 4 flipped left-right): identity + flip
(0, 4); the four flips, i.e. identity, left-right, up-down, both (0, 4, 6, 2); all eight."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling.image_utils import load_image  # noqa: E402
from modeling.inference import load_classifier, pixel_values, run_model  # noqa: E402
from modeling.metrics.statistics import paired_bootstrap  # noqa: E402
from modeling.selection import validation_set  # noqa: E402

SOURCES = ["../shared/data/isic2020-part", "../shared/data/isic2019-part"]
SUBSETS = {"single view": [0], "identity + flip": [0, 4], "four flips": [0, 2, 4, 6], "eight views": list(range(8))}


def signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"  # None: the bootstrap could not give it (one class only)


def difference_text(cell: dict) -> str:
    """"+0.0035 [-0.0032, +0.0105]" """
    low, high = cell["ci95"] or (None, None)
    return f"{signed(cell['difference'])} [{signed(low)}, {signed(high)}]"


def view_probabilities(model, processor, paths: list[str], positive: int, batch_size: int = 8) -> np.ndarray:
    """(N, 8): each image's calibrated p(positive) in each view of `tta_views`."""
    views = []
    for start in tqdm(range(0, len(paths), batch_size), desc="validation", unit="batch"):
        pixels = torch.cat([pixel_values(processor, load_image(p)) for p in paths[start : start + batch_size]])
        views.append(run_model(model, pixels, tta=True).view_probs[..., positive].numpy())
    return np.concatenate(views)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--dataset", nargs="+", default=SOURCES)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    data = validation_set(args.dataset)
    model, processor, _ = load_classifier(args.model)
    views = view_probabilities(model, processor, data.paths, model.config.label2id[data.positive], args.batch_size)
    probs = {name: views[:, index].mean(1) for name, index in SUBSETS.items()}
    scores, differences = {}, {}
    for name, p in probs.items():
        scores[name] = {s: float(roc_auc_score(data.labels[data.sources == s], p[data.sources == s]))
                        for s in np.unique(data.sources)}
        scores[name]["mean"] = float(np.mean(list(scores[name].values())))
        print(f"{name:16s}", json.dumps({k: round(v, 4) for k, v in scores[name].items()}), flush=True)
        if name == "single view":
            continue
        cells = {}
        for s in np.unique(data.sources):
            index = data.sources == s
            stacked = [np.stack([1 - q[index], q[index]], 1) for q in (p, probs["single view"])]
            roc = paired_bootstrap(data.labels[index], *stacked)["roc_auc"]
            cells[s] = {"difference": roc["delta"], "ci95": roc["ci95"]}
        differences[f"{name} - single view"] = cells
        print("  - single view", json.dumps({s: difference_text(c) for s, c in cells.items()}), flush=True)
    result = {"model": str(args.model), "subsets": SUBSETS, "roc_auc": scores, "paired_roc_auc": differences,
              "n": {s: int((data.sources == s).sum()) for s in np.unique(data.sources)}}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
