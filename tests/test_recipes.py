"""The reference recipes (recipes/*.sh) pass only options train_hf.py accepts, with the settings RESULTS.md states.
A stand-in `python` on PATH records each command instead of training."""

import json
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from train_hf import parse_args

ROOT = Path(__file__).resolve().parents[1]


def recorded_commands(recipe: str, tmp_path: Path, env: dict | None = None, gpus: int = 0) -> list[list[str]]:
    """Each command the recipe ran, its last item the CUDA_VISIBLE_DEVICES it ran with; `gpus` fakes nvidia-smi."""
    bin_dir, log = tmp_path / "bin", tmp_path / "commands.jsonl"
    bin_dir.mkdir(parents=True)
    if gpus:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: fake'\n" for i in range(gpus)))
        smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    fake = bin_dir / "python"
    fake.write_text(f"#!/usr/bin/env python3\nimport json, os, sys\nopen({str(log)!r}, 'a').write(json.dumps("
                    "sys.argv[1:] + ['CUDA_VISIBLE_DEVICES=' + os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')])"
                    " + '\\n')\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    result = subprocess.run([str(ROOT / "recipes" / recipe), str(tmp_path / "data"), str(tmp_path / "out")],
                            env={**{k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"},
                                 "PATH": f"{bin_dir}:{os.environ['PATH']}", **(env or {})},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in log.read_text().splitlines()]


def train_commands(commands: list[list[str]]) -> list[list[str]]:
    """The train_hf.py commands, without the recorded environment item."""
    return [c[:-1] for c in commands if c[0] == "train_hf.py"]


def train_devices(commands: list[list[str]]) -> list[str]:
    return sorted(c[-1].split("=", 1)[1] for c in commands if c[0] == "train_hf.py")


@pytest.mark.parametrize("recipe", ["isic2020_gpu224.sh", "isic2020_cpu128.sh"])
def test_recipe_arguments_parse_and_share_the_recipe(recipe, tmp_path):
    # BF16=false: TrainingArguments refuses bf16 on a CPU without it (this machine); the GPU run uses true.
    commands = train_commands(recorded_commands(recipe, tmp_path, {"EPOCHS": "70", "BF16": "false"}))
    assert commands
    for command in commands:
        model_args, data_args, args = parse_args(command[1:])
        assert (args.learning_rate, args.per_device_train_batch_size, args.weight_decay, args.seed) == (
            1e-3, 32, 0.05, 42)
        assert args.lr_scheduler_type.value == "cosine" and args.warmup_steps == 0.1
        assert data_args.drop_duplicates and data_args.validation_fraction == 0.15 and data_args.split_seed == 42
        assert model_args.image_size == (224 if "gpu" in recipe else 128)
        assert args.num_train_epochs == (70 if "gpu" in recipe else 8)


def test_transfer_recipe_trains_the_three_fusions_from_imagenet_per_seed(tmp_path):
    commands = train_commands(recorded_commands("transfer_cpu.sh", tmp_path))
    assert len(commands) == 2  # SEEDS="1 2" by default
    parsed = [parse_args(command[1:]) for command in commands]
    for model_args, data_args, args in parsed:
        assert model_args.models == "channel,none,spatial" and model_args.pretrained_backbone == "efficientnet-lite0"
        assert model_args.channels_last and model_args.image_size is None  # the weights' own resolution (224 px)
        assert (args.learning_rate, args.num_train_epochs, args.per_device_train_batch_size) == (3e-4, 10, 32)
        assert data_args.drop_duplicates and data_args.validation_fraction == 0.15 and data_args.split_seed == 42
    assert [args.seed for _, _, args in parsed] == [1, 2]
    assert [Path(args.output_dir).name for _, _, args in parsed] == ["seed-1", "seed-2"]
    chosen = train_commands(recorded_commands("transfer_cpu.sh", tmp_path / "b", {
        "SEEDS": "7", "MODELS": "channel", "BACKBONE": "efficientnet-lite2", "EPOCHS": "6"}))
    (model_args, _, args), = [parse_args(command[1:]) for command in chosen]
    assert (model_args.models, model_args.pretrained_backbone, args.num_train_epochs, args.seed) == (
        "channel", "efficientnet-lite2", 6, 7)


def test_gpu_recipe_trains_three_models_and_compares_them(tmp_path):
    commands = recorded_commands("isic2020_gpu224.sh", tmp_path, {"BF16": "false"}, gpus=2)
    assert all(c[c.index("--bf16") + 1] == "false" for c in train_commands(commands))
    models = [parse_args(c[1:])[0].models for c in train_commands(commands)]
    assert sorted(models) == ["channel", "none", "spatial"]  # in parallel: any order
    # One GPU per process, round robin: no process sees two GPUs (the Trainer would use DataParallel).
    assert train_devices(commands) == ["0", "0", "1"]
    assert commands[-1][:2] == ["-m", "modeling.compare"]


def test_gpu_recipe_leaves_the_devices_alone_without_nvidia_smi_or_when_chosen(tmp_path):
    commands = recorded_commands("isic2020_gpu224.sh", tmp_path / "a", {"BF16": "false"})
    assert train_devices(commands) == ["unset"] * 3
    chosen = recorded_commands("isic2020_gpu224.sh", tmp_path / "b", {"BF16": "false", "CUDA_VISIBLE_DEVICES": "3"},
                               gpus=2)
    assert train_devices(chosen) == ["3"] * 3


def test_finetune_recipe_compares_fine_tuning_with_scratch_under_one_budget(tmp_path):
    commands = recorded_commands("finetune_isic2019.sh", tmp_path, {"EPOCHS": "3", "EXTRA": "--max_train_samples 40"})
    runs = train_commands(commands)
    assert len(runs) == 2
    parsed = [parse_args(c[1:]) for c in runs]
    (tuned, tuned_data, tuned_args), (scratch, scratch_data, scratch_args) = parsed
    assert tuned.model_name_or_path == "checkpoints/asff-resnet50-isic2020" and scratch.model_name_or_path is None
    for model_args, data_args, args in parsed:  # the same budget, data and split
        assert args.num_train_epochs == 3 and data_args.max_train_samples == 40
        assert data_args.test_fraction == 0.15 and data_args.split_seed == 42 and data_args.drop_duplicates
        assert model_args.image_size == 224 and args.per_device_train_batch_size == 32
    assert (tuned_args.learning_rate, scratch_args.learning_rate) == (3e-4, 1e-3)
    assert commands[-1][:2] == ["-m", "modeling.compare"]


def test_input_size_probe_prints_one_validation_row_per_size(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """recipes/input_size_probe.py (RESULTS.md: a larger input at test time) on generated images: one table row per
    size, the per-source validation ROC AUCs and their mean, the test split never read."""
    import importlib.util
    import sys

    from helpers import make_image_folder

    data = make_image_folder(tmp_path / "data", {"train": 10, "test": 2}, size=48)
    spec = importlib.util.spec_from_file_location("input_size_probe", ROOT / "recipes" / "input_size_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    monkeypatch.setattr(sys, "argv", ["input_size_probe.py", str(tiny_model_dir), "--sizes", "32", "40",
                                      "--dataset", str(data)])
    probe.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and " px |" in line]
    assert [row.split(" |")[0] for row in rows] == ["| 32 px", "| 40 px"]
    assert all(0 <= float(cell) <= 1 for row in rows for cell in row.strip("|").split("|")[1:])


def test_cam_class_overlap_correlates_each_images_two_class_maps(tiny_model_dir, tmp_path):
    """recipes/cam_class_overlap.py (RESULTS.md: the CAM against the other class) on generated images: both targets
    summarised over the validation sample, an empty map counted apart."""
    import importlib.util

    from helpers import make_image_folder

    data = make_image_folder(tmp_path / "data", {"train": 20, "test": 2}, size=48)
    spec = importlib.util.spec_from_file_location("cam_class_overlap", ROOT / "recipes" / "cam_class_overlap.py")
    overlap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overlap)
    summary = overlap.main([str(tiny_model_dir), "--dataset", str(data), "--limit", "4",
                            "--out", str(tmp_path / "overlap.json")])
    assert summary["images"] == 4 and json.loads((tmp_path / "overlap.json").read_text()) == summary
    for name in ("own_logit", "margin"):
        part = summary[name]
        assert 0 <= part["images_with_an_empty_map"] <= 4
        assert part["images_with_an_empty_map"] == 4 or -1 <= part["median"] <= 1


def test_tta_probe_scores_the_view_subsets_it_names(tiny_model_dir, tmp_path):
    """recipes/tta_probe.py (RESULTS.md: test-time augmentation on the default): the views it averages are the ones
    its subsets name (view 4 the left-right flip, 6 the up-down flip, 2 the half turn), the single view is the model's
    plain prediction and all eight are the app's `--tta`; each subset is scored and paired with the single view."""
    import importlib.util

    import torch
    from helpers import make_image_folder

    from modeling.image_utils import load_image
    from modeling.inference import load_classifier, pixel_values, predict_batch, probabilities

    data = make_image_folder(tmp_path / "data", {"train": 20, "test": 2}, size=48)
    spec = importlib.util.spec_from_file_location("tta_probe", ROOT / "recipes" / "tta_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    model, processor, _ = load_classifier(tiny_model_dir)
    paths = sorted(str(p) for p in (data / "train" / "malignant").iterdir())[:3]
    views = probe.view_probabilities(model, processor, paths, positive=1, batch_size=2)
    pixels = torch.cat([pixel_values(processor, load_image(p)) for p in paths])
    for index, transform in {0: lambda x: x, 4: lambda x: x.flip(-1), 6: lambda x: x.flip(-2),
                             2: lambda x: x.flip(-1, -2)}.items():
        np.testing.assert_allclose(views[:, index], probabilities(model, transform(pixels))[:, 1].numpy(), atol=1e-5)
    with_tta = [row["p_malignant"] for row in predict_batch(model, processor, paths, tta=True)]
    np.testing.assert_allclose(views.mean(1), with_tta, atol=1e-5)

    result = probe.main([str(tiny_model_dir), "--dataset", str(data), "--out", str(tmp_path / "probe.json")])
    assert set(result["roc_auc"]) == set(probe.SUBSETS) and json.loads((tmp_path / "probe.json").read_text()) == result
    assert set(result["paired_roc_auc"]) == {f"{name} - single view" for name in probe.SUBSETS if name != "single view"}
    assert all(0 <= score <= 1 for scores in result["roc_auc"].values() for score in scores.values())


def test_validation_by_image_shape_groups_each_source_by_acquisition_shape(tiny_model_dir, tmp_path):
    """recipes/validation_by_image_shape.py (RESULTS.md: where the isic2019-part ROC AUC comes from): shapes named by
    aspect ratio, every validation image in one group of its source, training images counted per group."""
    import importlib.util

    from helpers import make_image_folder
    from PIL import Image

    spec = importlib.util.spec_from_file_location("by_shape", ROOT / "recipes" / "validation_by_image_shape.py")
    by_shape = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(by_shape)
    for size, shape in (((600, 450), "4:3"), ((450, 600), "4:3"), ((384, 256), "3:2"), ((100, 100), "1:1"),
                        ((500, 100), "other")):
        Image.new("RGB", size).save(tmp_path / "probe.png")
        assert by_shape.image_shape(tmp_path / "probe.png") == shape, size
    data = make_image_folder(tmp_path / "data", {"train": 20, "test": 2}, size=48)
    wide = sorted((data / "train").rglob("*.jpg"))[::2]
    for path in wide:  # every other image becomes 4:3
        Image.open(path).resize((64, 48)).save(path)
    result = by_shape.main([str(tiny_model_dir), "--dataset", str(data), "--out", str(tmp_path / "shape.json")])
    rows = result["rows"]
    assert {row["shape"] for row in rows} == {"1:1", "4:3"} and json.loads((tmp_path / "shape.json").read_text())
    from modeling.training import DataArguments, prepare_data

    splits = prepare_data(DataArguments(dataset=[str(data)], drop_duplicates=True, near_duplicate_distance=4),
                          seed=42).dataset
    assert sum(row["n"] for row in rows) == len(splits["validation"])
    assert sum(row["train_images"] for row in rows) == len(splits["train"])
    assert all(row["roc_auc"] is None or 0 <= row["roc_auc"] <= 1 for row in rows)
