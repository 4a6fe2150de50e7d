"""Batch prediction over a folder of images (recursively) to a CSV: file (relative path), label, calibrated
p_<label> per class, p_spread (with --tta), in_distribution, ood_score, error, and the settings (model, threshold, tta,
backend).

    python -m modeling.predict FOLDER --model DIR_OR_HUB_ID --out preds.csv [--threshold 0.4] [--tta]
                               [--backend auto|onnx-int8|onnx|torch]

A file that cannot be read gets a row with its error; the others are still classified. Images outside what the model
knows are classified and flagged (`in_distribution` false), not refused. The threshold on calibrated p(class 1)
defaults to the model config's `decision_threshold`.

--backend: `auto` (default) runs onnxruntime on the fastest ONNX graph the model directory has
(onnx/model_quantized.onnx, then onnx/model.onnx or its cached copy; `python -m modeling.export --onnx DIR` makes
them), else torch, with one log line saying so; `onnx` (float32, exported into a local cache on first use when
missing), `onnx-int8` and `torch` ask for one, and fail clearly when it cannot be had or does not match the model.
"""

import argparse
import logging
import sys
from pathlib import Path

from tqdm.auto import tqdm

from .decision import check_threshold
from .image_utils import IMAGE_SUFFIXES, find_images
from .inference import load_classifier, predict_batch, write_csv
from .onnx_runtime import AUTO, BACKENDS, OnnxMismatchError, OnnxUnavailableError, backend_name, load_backend


def probability(text: str) -> float:
    try:
        return check_threshold(float(text))
    except ValueError as error:
        if "probability" not in str(error):
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder of images, searched recursively")
    parser.add_argument("--model", required=True, help="model directory or Hub id")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV to write (default: %(default)s)")
    parser.add_argument("--threshold", type=probability, default=None,
                        help="decision threshold on calibrated p(class 1), between 0 and 1 (default: the model's)")
    parser.add_argument("--tta", action="store_true", help="average over 8 flips/rotations")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--backend", choices=(AUTO, *BACKENDS), default=AUTO,
                        help="what runs the model (default: %(default)s, the fastest the model directory has)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a directory")
    paths = find_images(args.folder)
    if not paths:
        parser.error(f"no image files ({' '.join(IMAGE_SUFFIXES)}) under {args.folder}")
    try:
        model, processor, info = load_classifier(args.model)
    except Exception as error:  # missing directory, unknown Hub id, offline
        parser.exit(1, f"Could not load a model from {args.model}: {type(error).__name__}: {error}\n")
    if args.threshold is not None and len(info.id2label) != 2:  # it would be recorded in the CSV, and not used
        parser.error(f"--threshold applies to two-class models; {info.name} has {len(info.id2label)} classes and "
                     "decides by the most probable one")
    try:
        backend = load_backend(args.model, model, processor, args.backend)
    except (OnnxUnavailableError, OnnxMismatchError) as error:
        parser.exit(1, f"{error}\n")
    names = [p.relative_to(args.folder).as_posix() for p in paths]
    with tqdm(total=len(paths), unit="img", desc="Predicting") as bar:
        rows = predict_batch(model, processor, paths, threshold=args.threshold, tta=args.tta,
                             batch_size=args.batch_size, names=names, progress=bar.update, model_id=info.name,
                             backend=backend)
    write_csv(rows, args.out)
    failed = sum(bool(row["error"]) for row in rows)
    counts = ", ".join(f"{label}: {sum(row['label'] == label for row in rows)}" for label in info.id2label.values())
    flagged = sum(row["in_distribution"] is False for row in rows)
    print(f"{len(rows)} files -> {args.out} with {backend_name(backend)} ({counts}; unreadable: {failed}; "
          f"flagged as outside the training distribution: {flagged})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
