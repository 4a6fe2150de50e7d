"""How alike are a model's Grad-CAMs of its two classes? For a seeded sample of validation images, the Pearson
correlation between the benign and the malignant map of each image: with each class's own logit as the target
(`ClassifierOutputTarget`) and with the margin of each class over the other (`explain.ClassMarginTarget`, the app's
default). Raw maps at the fused layer (`explain.raw_grad_cams`); an image whose map is empty for a class has no
correlation and is counted apart.

    python recipes/cam_class_overlap.py checkpoints/asff-lite2-isic --limit 200 --out results/cam-contrast/overlap.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling.explain import raw_grad_cams  # noqa: E402
from modeling.inference import load_classifier  # noqa: E402
from modeling.lesion_focus import stratified_sample  # noqa: E402
from modeling.selection import validation_set  # noqa: E402

SOURCES = ["../shared/data/isic2020-part", "../shared/data/isic2019-part"]


def correlations(model, processor, paths: list[str], contrast: bool, batch_size: int = 16) -> np.ndarray:
    """Per image: the correlation between its class-0 and class-1 maps (NaN when either map is empty)."""
    from modeling.image_utils import load_image

    values = []
    for start in range(0, len(paths), batch_size):
        images = [load_image(p) for p in paths[start:start + batch_size]]
        inputs = processor(images=images, return_tensors="pt")["pixel_values"].float()
        doubled = inputs.repeat_interleave(2, dim=0)  # each image twice: once per class
        maps, _ = raw_grad_cams(model, doubled, [0, 1] * len(images), contrast=contrast)
        for a, b in zip(maps[0::2], maps[1::2], strict=True):
            values.append(np.corrcoef(a.ravel(), b.ravel())[0, 1] if a.std() > 0 and b.std() > 0 else np.nan)
    return np.asarray(values)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--dataset", nargs="+", default=SOURCES)
    parser.add_argument("--limit", type=int, default=200, help="a seeded sample, stratified by source and label")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    data = validation_set(args.dataset)
    rows = stratified_sample(list(zip(data.sources.tolist(), data.labels.tolist(), strict=True)), args.limit,
                             args.seed)
    paths = [data.paths[i] for i in rows]
    model, processor, _ = load_classifier(args.model_dir)
    summary = {"model": args.model_dir, "images": len(paths), "seed": args.seed, "target_layer": "fused"}
    for name, contrast in (("own_logit", False), ("margin", True)):
        r = correlations(model, processor, paths, contrast)
        kept = r[~np.isnan(r)]
        summary[name] = {"images_with_an_empty_map": int(np.isnan(r).sum())}
        if len(kept):
            summary[name].update(median=float(np.median(kept)), mean=float(kept.mean()),
                                 quartiles=[float(q) for q in np.percentile(kept, [25, 75])],
                                 share_above_09=float((kept > 0.9).mean()))
        print(name, json.dumps(summary[name]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
