"""Validation ROC AUC per source of a saved model evaluated at several input sizes (a FixRes check: networks trained
on random crops often score higher on a slightly larger input at test time). Validation only: the split is carved as
`train_hf.py` carves it (same fraction, seed and duplicate handling), the test split is never read.

    python recipes/input_size_probe.py checkpoints/asff-lite0-isic --sizes 224 256 288 \
        --dataset ../shared/data/isic2020-part ../shared/data/isic2019-part

Only the processor's output size changes; colour constancy, resize mode and normalisation stay as saved.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import AutoImageProcessor, AutoModelForImageClassification  # noqa: E402

from modeling.data import collate_fn  # noqa: E402
from modeling.metrics import compute_classification_metrics  # noqa: E402
from modeling.training import DataArguments, attach_transforms, prepare_data  # noqa: E402


def validation_probabilities(model, prepared, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = [], []
    with torch.no_grad():
        for batch in DataLoader(prepared.dataset["validation"], batch_size=batch_size, collate_fn=collate_fn):
            probs.append(torch.softmax(model(pixel_values=batch["pixel_values"]).logits, -1).numpy())
            labels.append(batch["labels"].numpy())
    return np.concatenate(probs), np.concatenate(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a saved model directory")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 256, 288])
    parser.add_argument("--dataset", nargs="+", required=True, help="the sources, as given to train_hf.py")
    parser.add_argument("--near_duplicate_distance", type=int, default=4, help="as the model's training used")
    args = parser.parse_args()
    prepared = prepare_data(DataArguments(dataset=args.dataset, drop_duplicates=True,
                                          near_duplicate_distance=args.near_duplicate_distance), seed=42)
    model = AutoModelForImageClassification.from_pretrained(args.model, trust_remote_code=True).eval()
    sources = prepared.source_indices("validation")
    print(f"| input | {' | '.join(f'{name} val. ROC AUC' for name in sources)} | mean |")
    print(f"|---|{'---|' * len(sources)}---|")
    for size in args.sizes:
        processor = AutoImageProcessor.from_pretrained(args.model, size={"height": size, "width": size})
        attach_transforms(prepared, processor, strength=0.0)
        probs, labels = validation_probabilities(model, prepared)
        aucs = [compute_classification_metrics(probs[rows], labels[rows])["roc_auc"] for rows in sources.values()]
        print(f"| {size} px | {' | '.join(f'{auc:.3f}' for auc in aucs)} | {np.mean(aucs):.3f} |", flush=True)


if __name__ == "__main__":
    main()
