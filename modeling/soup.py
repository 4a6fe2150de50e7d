"""Model soups (Wortsman et al. 2022, arXiv:2203.05482): the uniform average of the weights of models fine-tuned from
the same initialisation, and the greedy soup, which adds each model (best first) only if a held-out score does not
fall. Unlike an ensemble it is one model: one forward pass, the same latency, `from_pretrained` as usual.

Only models of one architecture mix (same config apart from what training or calibration sets: input size, fitted
thresholds and OOD statistics, the temperature); the soup keeps the first (best) model's config, processor and remote
code, and its `training_settings.json` records every ingredient's."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
SETTINGS = "training_settings.json"
# Files of a model directory that describe the architecture and the input: a soup copies them from its first model.
# Everything else (reports, cards, ONNX graphs) belongs to the weights it was made for.
COPIED = ("config.json", "preprocessor_config.json", "*.py")
# Config keys that training and calibration set, which may differ between the models of one soup.
NOT_ARCHITECTURE = {"_name_or_path", "transformers_version", "image_size", "temperature", "decision_threshold",
                    "decision_threshold_method", "ood_threshold", "ood_pass_rate", "dtype", "torch_dtype",
                    "training_settings"}


class SoupError(ValueError):
    """Models that cannot be averaged (other architectures, other parameters)."""


def _architecture(model_dir: Path) -> dict[str, Any]:
    config = json.loads((model_dir / "config.json").read_text())
    return {k: v for k, v in config.items() if k not in NOT_ARCHITECTURE}


def check_compatible(model_dirs: Sequence[str | Path]) -> None:
    """Raises `SoupError` naming the first model whose architecture (config) differs from the first's."""
    dirs = [Path(d) for d in model_dirs]
    if not dirs:
        raise SoupError("a soup needs at least one model")
    for d in dirs:
        if not (d / WEIGHTS).is_file():
            raise SoupError(f"{d} has no {WEIGHTS}")
    reference = _architecture(dirs[0])
    for d in dirs[1:]:
        other = _architecture(d)
        differ = sorted(k for k in reference.keys() | other.keys() if reference.get(k) != other.get(k))
        if differ:
            raise SoupError(f"{d} is not the architecture of {dirs[0]} (config differs in {', '.join(differ)})")


def average_weights(model_dirs: Sequence[str | Path]) -> dict[str, torch.Tensor]:
    """The uniform average of the models' weights, summed in float32 and stored in the first model's dtypes; integer
    tensors (BatchNorm's step counters) are the first model's."""
    check_compatible(model_dirs)
    states = [load_file(Path(d) / WEIGHTS) for d in model_dirs]
    reference = states[0]
    for d, state in zip(model_dirs[1:], states[1:], strict=True):
        if state.keys() != reference.keys():
            raise SoupError(f"{d} has other parameters than {model_dirs[0]}: "
                            f"{sorted(state.keys() ^ reference.keys())[:5]}")
        shapes = [k for k in reference if state[k].shape != reference[k].shape]
        if shapes:
            raise SoupError(f"{d}: other shapes than {model_dirs[0]} for {shapes[:5]}")
    averaged = {}
    for key, tensor in reference.items():
        if tensor.is_floating_point():
            total = sum(state[key].float() for state in states)
            averaged[key] = (total / len(states)).to(tensor.dtype)
        else:
            averaged[key] = tensor.clone()
    return averaged


def _settings(model_dir: Path) -> dict[str, Any]:
    path = model_dir / SETTINGS
    return json.loads(path.read_text()) if path.is_file() else {}


def write_soup(output_dir: str | Path, model_dirs: Sequence[str | Path], record: dict[str, Any] | None = None
               ) -> Path:
    """Writes the uniform soup of `model_dirs` as a model directory (the first model's config, processor and code).
    Its `training_settings.json` is the first model's, without its per-run fields, plus `soup`: the method, each
    ingredient's name and settings, and `record` (e.g. the greedy search's scores)."""
    dirs = [Path(d) for d in model_dirs]
    weights = average_weights(dirs)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for pattern in COPIED:
        for path in dirs[0].glob(pattern):
            shutil.copy2(path, output_dir / path.name)
    save_file(weights, output_dir / WEIGHTS, metadata={"format": "pt"})
    ingredients = []
    for d in dirs:
        settings = {k: v for k, v in _settings(d).items() if k != "history"}
        ingredients.append({"name": settings.get("name", d.name), "directory": str(d), **settings})
    per_run = ("name", "history", "best_epoch", "epochs_completed", "train_runtime_s", "seed", "ema", "side",
               "ship", "lane")
    settings = {k: v for k, v in _settings(dirs[0]).items() if k not in per_run}
    settings["name"] = output_dir.name
    settings["soup"] = {"method": "uniform average of the weights (Wortsman et al. 2022, arXiv:2203.05482)",
                        "ingredients": ingredients, **(record or {})}
    (output_dir / SETTINGS).write_text(json.dumps(settings, indent=1))
    return output_dir


def greedy_soup(model_dirs: Sequence[str | Path], score: Callable[[Path], float], work_dir: str | Path,
                scores: dict[str, float] | None = None, log: Callable[[str], Any] = print
                ) -> tuple[list[Path], dict[str, Any]]:
    """Wortsman et al.'s greedy soup: the models sorted by their own `score` (higher is better), then each added to the
    soup if the soup's score does not fall. `score` scores a model directory (e.g. the mean per-source validation ROC
    AUC: `modeling.selection`); `scores` may hold the models' own scores, keyed by directory, to skip scoring them
    again; trial soups are written under `work_dir`. Returns the chosen directories (best first) and a record of the
    search (every model's score, every trial soup's score, the soup's final score)."""
    dirs = [Path(d) for d in model_dirs]
    check_compatible(dirs)
    own = {str(d): (scores or {}).get(str(d)) for d in dirs}
    for d in dirs:
        if own[str(d)] is None:
            own[str(d)] = score(d)
            log(f"{d.name}: {own[str(d)]:.4f}")
    ranked = sorted(dirs, key=lambda d: own[str(d)], reverse=True)
    chosen, best, trials = [ranked[0]], own[str(ranked[0])], []
    for i, candidate in enumerate(ranked[1:], 1):
        trial = write_soup(Path(work_dir) / f"trial-{i}", [*chosen, candidate])
        value = score(trial)
        kept = value >= best
        trials.append({"added": candidate.name, "score": value, "kept": kept})
        log(f"+ {candidate.name}: {value:.4f} ({'kept' if kept else 'rejected'}; soup so far {best:.4f})")
        if kept:
            chosen.append(candidate)
            best = value
    record = {"selection": "greedy (each model added, best first, only if the soup's score does not fall)",
              "model_scores": {Path(k).name: v for k, v in own.items()}, "trials": trials, "score": best}
    return chosen, record
