"""Batch prediction over a folder of images (recursively) to a CSV: file (relative path), label, calibrated
p_<label> per class, p_spread (with --tta), in_distribution, ood_score, error, and the settings (model, threshold, tta).

    python -m modeling.predict FOLDER --model DIR_OR_HUB_ID --out preds.csv [--threshold 0.4] [--tta]

A file that cannot be read gets a row with its error; the others are still classified. Images outside what the model
knows are classified and flagged (`in_distribution` false), not refused. The threshold on calibrated p(class 1)
defaults to the model config's `decision_threshold`.
"""

import argparse
import sys
from pathlib import Path

from tqdm.auto import tqdm

from .image_utils import IMAGE_SUFFIXES, find_images
from .inference import load_classifier, predict_batch, write_csv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder of images, searched recursively")
    parser.add_argument("--model", required=True, help="model directory or Hub id")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV to write (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=None, help="decision threshold on p(class 1)")
    parser.add_argument("--tta", action="store_true", help="average over 8 flips/rotations")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a directory")
    paths = find_images(args.folder)
    if not paths:
        parser.error(f"no image files ({' '.join(IMAGE_SUFFIXES)}) under {args.folder}")
    try:
        model, processor, info = load_classifier(args.model)
    except Exception as error:  # missing directory, unknown Hub id, offline
        parser.exit(1, f"Could not load a model from {args.model}: {type(error).__name__}: {error}\n")
    names = [p.relative_to(args.folder).as_posix() for p in paths]
    with tqdm(total=len(paths), unit="img", desc="Predicting") as bar:
        rows = predict_batch(model, processor, paths, threshold=args.threshold, tta=args.tta,
                             batch_size=args.batch_size, names=names, progress=bar.update, model_id=info.name)
    write_csv(rows, args.out)
    failed = sum(bool(row["error"]) for row in rows)
    counts = ", ".join(f"{label}: {sum(row['label'] == label for row in rows)}" for label in info.id2label.values())
    flagged = sum(row["in_distribution"] is False for row in rows)
    print(f"{len(rows)} files -> {args.out} ({counts}; unreadable: {failed}; "
          f"flagged as outside the training distribution: {flagged})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
