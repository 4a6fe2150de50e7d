"""Per-image CPU latency of the shipped models, side by side, on each backend: the app's analysis (`explain`:
preprocessing, forward, Grad-CAM on the fused map, overlay, fusion figure), a prediction with its Grad-CAM and nothing
else (`pred+cam`: preprocessing, then `grad_cam`, whose forward gives the prediction) and a prediction alone
(`predict`, no CAM), all interleaved so that every row sees the same machine load. Prints each median and its ratio to
the first model on torch (the reference ResNet-50 as a fresh clone's app explains with it), then the ratio of the
models on the same backend.

Backends: `torch` (everything in PyTorch) and `onnx` (the float32 graph: onnxruntime runs the backbone, for the
prediction and for Grad-CAM, whose torch part is only the layers above the backbone's stage maps; a model without a
shipped float32 graph gets one exported into the local cache first, once, see `modeling/onnx_runtime.py`).

    python benchmarks/model_latency.py [MODEL_DIR ...] [--backends torch onnx] [--repeats 9] [--threads 2]

Default models: checkpoints/asff-resnet50-isic2020 (the reference), checkpoints/asff-lite2-isic (the app's default,
288 px) and checkpoints/asff-lite0-isic.
"""

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeling.explain import explain, grad_cam  # noqa: E402
from modeling.inference import load_classifier, pixel_values, predict  # noqa: E402
from modeling.onnx_runtime import load_backend  # noqa: E402

DEFAULT_MODELS = [ROOT / "checkpoints" / name
                  for name in ("asff-resnet50-isic2020", "asff-lite2-isic", "asff-lite0-isic")]
TASKS = ("explain", "pred+cam", "predict")


def timed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--backends", nargs="+", choices=("torch", "onnx"), default=["torch", "onnx"])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # says when a float32 graph is exported first
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (450, 600, 3), dtype=np.uint8))  # a camera-sized photo
    rows = {}
    for path in args.models:
        model, processor, _ = load_classifier(path)
        for backend in args.backends:
            runner = None if backend == "torch" else load_backend(path, model, processor, "onnx")
            rows[path.name, backend] = (model, processor, runner)
    timings = {row: {task: [] for task in TASKS} for row in rows}
    for _ in range(args.repeats + 1):  # the first round warms up and is dropped
        for row, (model, processor, runner) in rows.items():
            timings[row]["explain"].append(timed_ms(lambda m=model, p=processor, r=runner: explain(
                m, p, image, backend=r)))
            timings[row]["pred+cam"].append(timed_ms(lambda m=model, p=processor, r=runner: grad_cam(
                m, pixel_values(p, image), backend=r)))
            timings[row]["predict"].append(timed_ms(lambda m=model, p=processor, r=runner: predict(
                m, p, image, backend=r)))
    medians = {row: {task: statistics.median(values[1:]) for task, values in tasks.items()}
               for row, tasks in timings.items()}
    reference = next(iter(rows))
    print(f"CPU, {args.threads} threads, {args.repeats} interleaved repeats, medians; ratio: times faster than "
          f"{reference[0]} on {reference[1]}")
    for task in TASKS:
        for row in rows:
            print(f"  {task:8s} {row[0]:26s} {row[1]:6s} {medians[row][task]:7.1f} ms   "
                  f"{medians[reference][task] / medians[row][task]:5.2f}x")
    names = list(dict.fromkeys(name for name, _ in rows))
    if len(names) > 1:
        print(f"Same backend, {names[0]} / each other model:")
        for task in TASKS:
            for backend in args.backends:
                for name in names[1:]:
                    ratio = medians[names[0], backend][task] / medians[name, backend][task]
                    print(f"  {task:8s} {backend:6s} {name:26s} {ratio:5.2f}x")


if __name__ == "__main__":
    main()
