"""Latency of the demo's single-image analysis relative to one plain forward pass, on CPU.

Model: the default (ResNet-50-sized, channel fusion) config at 224 px, random init. Timed, interleaved: one plain
forward of a preprocessed image (no grad), and `explain` (preprocess + forward + Grad-CAM on the fused map + overlay
+ fusion figure). Prints the median ratio last; the target is <= 3.5.

    python benchmarks/app_latency.py [--repeats 7] [--method gradcam] [--target fused]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling import AsffResNetConfig, AsffResNetForImageClassification  # noqa: E402
from modeling.explain import explain  # noqa: E402
from modeling.image_processing import build_image_processor  # noqa: E402
from modeling.inference import pixel_values  # noqa: E402


def timed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--target", default="fused")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = AsffResNetForImageClassification(AsffResNetConfig(image_size=224)).eval().requires_grad_(False)
    processor = build_image_processor(224)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
    inputs = pixel_values(processor, image)

    def forward():
        with torch.no_grad():
            model(pixel_values=inputs)

    def run_explain():
        return explain(model, processor, image, target=args.target, method=args.method)

    # Interleaved, so that both see the same load on a shared machine; the ratio is the median of per-pair ratios.
    forward(), run_explain()  # warm-up (allocator, lazy initialisation, matplotlib fonts)
    pairs = [(timed_ms(forward), timed_ms(run_explain)) for _ in range(args.repeats)]
    forward_ms = statistics.median(f for f, _ in pairs)
    explain_ms = statistics.median(e for _, e in pairs)
    ratio = statistics.median(e / f for f, e in pairs)
    parts = run_explain().timing_ms
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, 224 px, {args.repeats} repeats")
    print(f"plain forward:            {forward_ms:8.1f} ms (median)")
    print(f"explain ({args.method}, {args.target}): {explain_ms:8.1f} ms (median); one run's parts: {parts}")
    print(f"ratio (predict + Grad-CAM) / forward: {ratio:.2f} (target <= 3.5)")


if __name__ == "__main__":
    main()
