"""Rebuilds the models recipes/gpu_sweep.py returned (float16 weights, byte planes zlib-compressed, in parts) as
model directories that `train_hf.py --skip_training true --model_name_or_path DIR` calibrates, evaluates and
releases.

    python recipes/unpack_device_models.py DEVICE_OUT_DIR --out runs/device-models [--sweep results.json.gz]

Each directory gets the model (float32 safetensors, as trained in float32 with bf16 autocast and returned as
float16), its image processor (the sweep's preprocessing: Shades-of-Gray colour constancy when the run used it,
shortest edge + centre crop or squash, the backbone's normalisation) and `training_settings.json` (the run's recipe,
which the release's card and metrics record)."""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path

import numpy as np
from safetensors.torch import load

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling import AsffResNetConfig, AsffResNetForImageClassification  # noqa: E402
from modeling.backbones import pretrained_backbone_defaults  # noqa: E402
from modeling.image_processing import build_image_processor  # noqa: E402


def read_parts(folder: Path, name: str) -> tuple[dict, bytes]:
    parts = sorted(folder.glob(f"{name}.part*"), key=lambda p: int(p.suffix.removeprefix(".part")))
    blob = b"".join(p.read_bytes() for p in parts)
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + size])
    first, second = header["planes"]
    body = blob[8 + size:]
    low = np.frombuffer(zlib.decompress(body[:first]), dtype=np.uint8)
    high = np.frombuffer(zlib.decompress(body[first:first + second]), dtype=np.uint8)
    raw = np.stack([low, high], axis=1).reshape(-1).tobytes()[:header["size"]]
    return header, raw


def unpack(folder: Path, name: str, out: Path, run: dict | None) -> Path:
    header, raw = read_parts(folder, name)
    config_dict = {k: v for k, v in header["config"].items() if k not in ("auto_map", "architectures",
                                                                          "transformers_version", "dtype")}
    config = AsffResNetConfig(**config_dict)
    model = AsffResNetForImageClassification(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load(raw).items()}
    model.load_state_dict(state, strict=True)
    target = out / name
    model.save_pretrained(target)
    settings = (run or {}).get("run", {})
    normalisation = {}
    if settings.get("backbone", "").startswith("lite"):
        defaults = pretrained_backbone_defaults(f"efficientnet-{settings['backbone']}")
        normalisation = {"image_mean": defaults["image_mean"], "image_std": defaults["image_std"]}
    processor = build_image_processor(config.image_size, color_constancy=settings.get("color_constancy", False),
                                      resize_mode=settings.get("resize", "crop"), **normalisation)
    processor.save_pretrained(target)
    if run is not None:
        (target / "training_settings.json").write_text(json.dumps({
            **settings, "best_epoch": run["best_epoch"], "epochs_completed": len(run["history"]),
            "train_images": run["train_images"], "train_runtime_s": run["train_s"], "hardware": run["device"],
            "trained_by": "recipes/gpu_sweep.py (GPU-side augmentation, bf16 autocast, AdamW, cosine, 10 % warmup, "
                          f"weight decay 0.05, batch {settings.get('batch', 64)})",
            "history": run["history"]}, indent=1))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/device-models"))
    parser.add_argument("--sweep", type=Path, default=None,
                        help="the sweep results (.json.gz) for the recipes (default: FOLDER/sweep_results.json.gz)")
    args = parser.parse_args()
    sweep = args.sweep or (args.folder / "sweep_results.json.gz")  # the sweep writes it next to the parts
    if not sweep.exists():
        raise SystemExit(f"no {sweep}: pass --sweep (the recipes decide each model's image processor)")
    runs = json.loads(zlib.decompress(sweep.read_bytes()))["runs"]
    names = sorted({p.name.rsplit(".part", 1)[0] for p in args.folder.glob("*.part*")})
    for name in names:
        print(unpack(args.folder, name, args.out, runs.get(name)))


if __name__ == "__main__":
    main()
