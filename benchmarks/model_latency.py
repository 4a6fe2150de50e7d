"""Per-image CPU latency of the shipped models, side by side: the app's analysis (`explain`: preprocessing, forward,
Grad-CAM on the fused map, overlay, fusion figure) and a prediction alone (`predict`, no CAM), interleaved so both
models see the same machine load. Prints each median and the ratio to the first model (the reference ResNet-50).

    python benchmarks/model_latency.py [MODEL_DIR ...] [--repeats 9] [--threads 2]

Default models: checkpoints/asff-resnet50-isic2020 (the reference) and checkpoints/asff-lite0-isic.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeling.explain import explain  # noqa: E402
from modeling.inference import load_classifier, predict  # noqa: E402

DEFAULT_MODELS = [ROOT / "checkpoints" / "asff-resnet50-isic2020", ROOT / "checkpoints" / "asff-lite0-isic"]


def timed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (450, 600, 3), dtype=np.uint8))  # a camera-sized photo
    loaded = {path.name: load_classifier(path)[:2] for path in args.models}
    timings: dict[str, dict[str, list[float]]] = {name: {"explain": [], "predict": []} for name in loaded}
    for model, processor in loaded.values():  # warm-up
        explain(model, processor, image)
        predict(model, processor, image)
    for _ in range(args.repeats):
        for name, (model, processor) in loaded.items():
            timings[name]["explain"].append(timed_ms(lambda m=model, p=processor: explain(m, processor=p,
                                                                                          image=image)))
            timings[name]["predict"].append(timed_ms(lambda m=model, p=processor: predict(m, p, image)))
    reference = next(iter(loaded))
    print(f"CPU, {args.threads} threads, {args.repeats} interleaved repeats, medians:")
    for task in ("explain", "predict"):
        base = statistics.median(timings[reference][task])
        for name in loaded:
            median = statistics.median(timings[name][task])
            print(f"  {task:8s} {name:28s} {median:8.1f} ms   {base / median:5.2f}x faster than {reference}")


if __name__ == "__main__":
    main()
