"""Exports a trained model directory as a compact release (float16 safetensors that load as float32), or a model
directory as ONNX graphs for onnxruntime.

    python -m modeling.export runs/asff checkpoints/asff-resnet50-isic2020
    python -m modeling.export --onnx checkpoints/asff-resnet50-isic2020 [--dataset FOLDER] [--fp32 dir|cache]

The release copies the image processor, model card, metrics and report and leaves Trainer checkpoints behind. `--onnx`
writes MODEL_DIR/onnx/model.onnx (float32; `--fp32 cache`: into the local cache instead, for a checkpoint whose
float32 graph is too large to commit) and onnx/model_quantized.onnx (int8), verified against PyTorch and float32 as
they are written (`modeling.onnx_export`)."""

import argparse
import json
import shutil
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForImageClassification

from .model_card import with_usage_path
from .pipeline_asff_resnet import add_pipeline_to

COPIED = ("preprocessor_config.json", "image_processing_asff_resnet.py", "README.md", "metrics.json")


def rename_card(card_path: Path, name: str, note: str | None = None, model_path: str | None = None) -> None:
    """Names the release in its model card (metadata, heading), points its usage snippets at `model_path` (default
    `name`: the release's directory as the command named it, or its Hub id) and appends release notes."""
    card = ModelCard.load(card_path)
    old = card.data.model_name
    card.data.model_name = name
    if old:
        card.content = card.content.replace(f"\n# {old}\n", f"\n# {name}\n", 1)
    card.content = with_usage_path(card.content, model_path or name)
    if note:
        card.content += f"\n## Release notes\n\n{note}\n"
    card.save(card_path)


def export_half_precision(source: str | Path, destination: str | Path, note: str | None = None) -> Path:
    """Weights stored in float16 (half the size; the OOD statistics stay float32); `config.json` keeps
    `dtype: float32`, so `from_pretrained` casts them back to float32 on load. The model card is renamed after the
    destination folder."""
    source, destination = Path(source), Path(destination)
    model = AutoModelForImageClassification.from_pretrained(source, trust_remote_code=True, dtype=torch.float32)
    staging = destination.with_name(destination.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    model.to(torch.float16)
    if getattr(model, "ood_scorer", None) is not None:
        model.ood_scorer.float()  # the OOD precision matrix keeps float32: float16 would lose its small directions
    model.save_pretrained(staging)
    add_pipeline_to(staging)
    config_path = staging / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "float32"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in COPIED:
        if (source / name).is_file():
            shutil.copy2(source / name, staging / name)
    if (source / "report").is_dir():
        shutil.copytree(source / "report", staging / "report")
    if (staging / "README.md").is_file():
        rename_card(staging / "README.md", destination.name, note, model_path=str(destination))
    shutil.rmtree(destination, ignore_errors=True)
    staging.rename(destination)
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, nargs="?", help="a model directory written by train_hf.py")
    parser.add_argument("destination", type=Path, nargs="?",
                        help="the release folder (its name becomes the model's name)")
    parser.add_argument("--note", help="release notes appended to the model card")
    onnx = parser.add_argument_group("ONNX (--onnx MODEL_DIR)")
    onnx.add_argument("--onnx", type=Path, metavar="MODEL_DIR",
                      help="write MODEL_DIR/onnx/ (float32, and int8 unless --quantization none)")
    onnx.add_argument("--dataset", type=Path, help="image folder: calibration from its train split, checks on its "
                                                   "test split (else validation, else all); default: generated images")
    onnx.add_argument("--fp32", choices=("dir", "cache"), default="dir",
                      help="where the float32 graph goes (default: %(default)s, MODEL_DIR/onnx/)")
    onnx.add_argument("--quantization", choices=("static", "dynamic", "none"), default="static",
                      help="the int8 graph's quantisation; none: the float32 graph only (default: %(default)s)")
    onnx.add_argument("--calibration-images", type=int, default=64)
    onnx.add_argument("--verify-images", type=int, default=64,
                      help="images compared with PyTorch (0: all the checked images; default: %(default)s)")
    onnx.add_argument("--compare-quantization", action="store_true",
                      help="also measure the other quantisation method (recorded in the report)")
    args = parser.parse_args(argv)
    if args.onnx is not None:
        return export_onnx_cli(args, parser)
    if args.source is None or args.destination is None:
        parser.error("give SOURCE and DESTINATION (a release), or --onnx MODEL_DIR")
    print(export_half_precision(args.source, args.destination, args.note))
    return 0


def export_onnx_cli(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import logging

    from .onnx_export import ExportVerificationError, card_line, export_onnx

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (args.onnx / "config.json").is_file():
        parser.error(f"{args.onnx} is not a model directory (no config.json)")
    if args.dataset is not None and not args.dataset.is_dir():
        parser.error(f"--dataset {args.dataset} is not a directory")
    try:
        report = export_onnx(args.onnx, args.dataset, fp32=args.fp32, quantization=args.quantization,
                             calibration_count=args.calibration_images, verify_count=args.verify_images,
                             compare_quantization=args.compare_quantization)
    except ExportVerificationError as error:
        print(f"Export failed its check: {error}")
        return 1
    print(card_line(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
