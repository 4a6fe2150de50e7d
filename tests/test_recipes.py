"""The reference recipes (recipes/*.sh) pass only options train_hf.py accepts, with the settings RESULTS.md states.
A stand-in `python` on PATH records each command instead of training."""

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from train_hf import parse_args

ROOT = Path(__file__).resolve().parents[1]


def recorded_commands(recipe: str, tmp_path: Path, env: dict | None = None) -> list[list[str]]:
    bin_dir, log = tmp_path / "bin", tmp_path / "commands.jsonl"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(f"#!/usr/bin/env python3\nimport json, sys\nopen({str(log)!r}, 'a').write(json.dumps(sys.argv[1:])"
                    " + '\\n')\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    result = subprocess.run([str(ROOT / "recipes" / recipe), str(tmp_path / "data"), str(tmp_path / "out")],
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **(env or {})},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize("recipe", ["isic2020_gpu224.sh", "isic2020_cpu128.sh"])
def test_recipe_arguments_parse_and_share_the_recipe(recipe, tmp_path):
    # BF16=false: TrainingArguments refuses bf16 on a CPU without it (this machine); the GPU run uses true.
    commands = [c for c in recorded_commands(recipe, tmp_path, {"EPOCHS": "70", "BF16": "false"})
                if c[0] == "train_hf.py"]
    assert commands
    for command in commands:
        model_args, data_args, args = parse_args(command[1:])
        assert (args.learning_rate, args.per_device_train_batch_size, args.weight_decay, args.seed) == (
            1e-3, 32, 0.05, 42)
        assert args.lr_scheduler_type.value == "cosine" and args.warmup_steps == 0.1
        assert data_args.drop_duplicates and data_args.validation_fraction == 0.15 and data_args.split_seed == 42
        assert model_args.image_size == (224 if "gpu" in recipe else 128)
        assert args.num_train_epochs == (70 if "gpu" in recipe else 8)


def test_gpu_recipe_trains_three_models_and_compares_them(tmp_path):
    commands = recorded_commands("isic2020_gpu224.sh", tmp_path, {"BF16": "false"})
    assert all(c[c.index("--bf16") + 1] == "false" for c in commands if c[0] == "train_hf.py")
    models = [parse_args(c[1:])[0].models for c in commands if c[0] == "train_hf.py"]
    assert sorted(models) == ["channel", "none", "spatial"]  # in parallel: any order
    assert commands[-1][:2] == ["-m", "modeling.compare"]
