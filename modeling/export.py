"""Exports a trained model directory as a compact release: float16 safetensors that load as float32.

    python -m modeling.export runs/asff checkpoints/asff-resnet50-isic2020

Copies the image processor, model card, metrics and report; leaves Trainer checkpoints behind."""

import argparse
import json
import shutil
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForImageClassification

from .pipeline_asff_resnet import add_pipeline_to

COPIED = ("preprocessor_config.json", "image_processing_asff_resnet.py", "README.md", "metrics.json")


def rename_card(card_path: Path, name: str, note: str | None = None) -> None:
    """Names the release in its model card (metadata, heading, usage snippet) and appends release notes."""
    card = ModelCard.load(card_path)
    old = card.data.model_name
    card.data.model_name = name
    if old:
        card.content = card.content.replace(f"\n# {old}\n", f"\n# {name}\n", 1).replace(
            f'from_pretrained("{old}"', f'from_pretrained("{name}"')
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
        rename_card(staging / "README.md", destination.name, note)
    shutil.rmtree(destination, ignore_errors=True)
    staging.rename(destination)
    return destination


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a model directory written by train_hf.py")
    parser.add_argument("destination", type=Path, help="the release folder (its name becomes the model's name)")
    parser.add_argument("--note", help="release notes appended to the model card")
    args = parser.parse_args()
    print(export_half_precision(args.source, args.destination, args.note))


if __name__ == "__main__":
    main()
