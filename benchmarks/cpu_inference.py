"""CPU inference throughput: PyTorch eager vs onnxruntime float32 and int8, in one run, on one model directory.

Images per second at batch 1 and 16 (the model only: preprocessed inputs; PyTorch under no_grad, both on all the
cores torch uses), measured interleaved (each round times every backend once, so that they share the machine's load;
the median round is reported), the ratios to PyTorch, and the share of the cores' FMA peak. Then the app's predict
(no CAM: decoding, preprocessing, model, calibrated decision; `modeling.inference.predict`) latency at batch 1, per
backend. The float32 graph is made on first use into the local cache when the directory does not ship it.

    python benchmarks/cpu_inference.py [--model checkpoints/asff-resnet50-isic2020] [--rounds 5]
                                       [--dataset ../shared/data/isic2020-part] [--peak-gflops 190]

FLOPs are counted by torch's FlopCounterMode, 2 per multiply-add (ResNet-50 at 224 px: 4.1 G multiply-adds, 8.2
GFLOP); the peak defaults to 2 cores x AVX2 (2 FMA units x 8 float32 lanes x 2 FLOP) at ~3 GHz ~ 190 GFLOP/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeling.image_utils import load_image  # noqa: E402
from modeling.inference import load_classifier, predict  # noqa: E402
from modeling.onnx_runtime import load_backend  # noqa: E402
from modeling.synthetic import lesion_image  # noqa: E402

BATCH_SIZES = (1, 16)


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def flops_per_image(model: torch.nn.Module, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(pixel_values=torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def sample_images(dataset: Path | None, count: int) -> list:
    """Real images (the test split, spread over it) when a data set is given, else generated lesions."""
    if dataset is not None:
        from modeling.image_utils import find_images

        split = dataset / "test" if (dataset / "test").is_dir() else dataset
        paths = find_images(split)
        return [paths[i] for i in np.linspace(0, len(paths) - 1, count).astype(int)]
    rng = np.random.default_rng(0)
    return [lesion_image(i % 2, rng, 256) for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "checkpoints" / "asff-resnet50-isic2020")
    parser.add_argument("--dataset", type=Path, help="image folder (its test split) instead of generated images")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peak-gflops", type=float, default=190.0, help="the cores' FMA peak (default: %(default)s)")
    args = parser.parse_args()

    model, processor, info = load_classifier(args.model)
    runners = {"torch eager": None}
    for name in ("onnx", "onnx-int8"):
        try:
            runners[f"onnxruntime {'int8' if name.endswith('int8') else 'fp32'}"] = load_backend(
                args.model, model, processor, name)
        except Exception as error:  # no int8 file: measure what there is
            print(f"({name}: {error})")
    images = sample_images(args.dataset, 16)
    batch = processor(images=[load_image(i) for i in images], return_tensors="pt")["pixel_values"].float()
    size = batch.shape[-1]
    gflop = flops_per_image(model, size) / 1e9

    def forward(runner, x: torch.Tensor):
        if runner is None:
            with torch.no_grad():
                return model(pixel_values=x).logits
        return runner(pixel_values=x).logits

    inputs = {1: [batch[i:i + 1] for i in range(8)], 16: [batch]}  # batch 1: 8 images per timing
    for runner in runners.values():  # warm-up: allocators, lazy initialisation, ORT's first-run planning
        for x in (batch[:1], batch):
            forward(runner, x)
    load_before = os.getloadavg()[0]
    rates: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for bs in BATCH_SIZES:
            for name, runner in runners.items():
                elapsed = seconds(lambda r=runner, b=bs: [forward(r, x) for x in inputs[b]])
                rates.setdefault((name, bs), []).append(sum(len(x) for x in inputs[bs]) / elapsed)

    print(f"{info.name}: {info.num_parameters / 1e6:.1f} M parameters, {size} px, {gflop:.2f} GFLOP/image "
          f"(2 per multiply-add); torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"onnxruntime {onnxruntime.__version__}; {os.cpu_count()} CPUs; "
          f"{'real' if args.dataset else 'generated'} images; median of {args.rounds} interleaved rounds")
    print(f"{'backend':18s} {'batch':>5s} {'images/s':>9s} {'vs torch':>9s} {'GFLOP/s':>8s} {'of peak':>8s}")
    for bs in BATCH_SIZES:
        base = statistics.median(rates[("torch eager", bs)])
        for name in runners:
            rate = statistics.median(rates[(name, bs)])
            print(f"{name:18s} {bs:5d} {rate:9.2f} {rate / base:8.2f}x {rate * gflop:8.1f} "
                  f"{rate * gflop / args.peak_gflops:8.1%}")

    # The app's predict (no CAM), batch 1, from an image file: decoding + preprocessing + model + decision.
    with tempfile.TemporaryDirectory() as folder:
        path = images[0] if isinstance(images[0], Path) else Path(folder) / "lesion.jpg"
        if not isinstance(images[0], Path):
            images[0].save(path)
        for runner in runners.values():
            predict(model, processor, path, backend=runner)
        latency: dict[str, list[float]] = {}
        for _ in range(args.rounds * 2):
            for name, runner in runners.items():
                latency.setdefault(name, []).append(seconds(lambda r=runner: predict(model, processor, path,
                                                                                       backend=r)) * 1000)
    base = statistics.median(latency["torch eager"])
    print("app predict (no CAM), batch 1, one image file:")
    for name, values in latency.items():
        ms = statistics.median(values)
        print(f"  {name:18s} {ms:7.1f} ms  ({base / ms:.2f}x lower latency than torch eager)")
    print("targets: onnxruntime fp32 >= 2.0x and int8 >= 3.5x torch eager's images/s; app predict latency >= 2x lower")
    # This run's own threads raise the load to ~2: only the load before it says whether others shared the cores.
    print(f"load average (1 min) before the timings: {load_before:.1f}"
          + ("" if load_before < 1.0 else " (other processes, or a run within the last minute, shared these cores; "
             "torch eager's OpenMP threads slow down far more than onnxruntime's under contention)"))
    print("(int8 arithmetic is not bound by the float32 FMA peak, so its share can pass 100 %)")


if __name__ == "__main__":
    main()
