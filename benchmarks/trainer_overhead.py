"""Trainer overhead: Trainer img/s divided by a plain PyTorch loop's img/s, same model, data, batch and optimiser,
measured in one run (the loop and the Trainer alternate, best of `--rounds`). Target >= 0.95.

    python benchmarks/trainer_overhead.py [--image_size 64] [--steps 12] [--rounds 2]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling import AsffResNetConfig, AsffResNetForImageClassification  # noqa: E402
from modeling.data import build_dataset_dict, build_transforms, collate_fn, make_transform_fn  # noqa: E402
from modeling.synthetic import make_image_folder  # noqa: E402


class StepTimer(TrainerCallback):
    """Times optimisation steps after the first `warmup` (excludes Trainer start-up, like the loop below)."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def make_model(image_size: int) -> AsffResNetForImageClassification:
    torch.manual_seed(0)
    return AsffResNetForImageClassification(AsffResNetConfig(image_size=image_size))


def trainer_throughput(dataset, image_size: int, batch: int, steps: int, warmup: int) -> float:
    timer = StepTimer(warmup)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, max_steps=steps,
                                 learning_rate=1e-3, save_strategy="no", report_to="none", disable_tqdm=True,
                                 remove_unused_columns=False, dataloader_pin_memory=False, logging_strategy="no",
                                 optim="adamw_torch", lr_scheduler_type="constant")
        Trainer(model=make_model(image_size), args=args, train_dataset=dataset, data_collator=collate_fn,
                callbacks=[timer]).train()
    return (steps - warmup) * batch / (timer.end - timer.start)


def loop_throughput(dataset, image_size: int, batch: int, steps: int, warmup: int) -> float:
    model = make_model(image_size).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, collate_fn=collate_fn,
                                         drop_last=True)
    done, start = 0, None
    while done < steps:
        for inputs in loader:
            loss = model(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the Trainer clips too (max_grad_norm=1)
            optimizer.step()
            optimizer.zero_grad()
            done += 1
            if done == warmup:
                start = time.perf_counter()
            if done == steps:
                break
    return (steps - warmup) * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_image_folder(Path(tmp), {"train": args.batch * 4, "test": 2}, size=args.image_size)
        dataset = build_dataset_dict(folder, validation_fraction=0.0).dataset["train"]
        dataset.set_transform(make_transform_fn(build_transforms(args.image_size, [0.5] * 3, [0.5] * 3, True)))
        loop, trainer = [], []
        for _ in range(args.rounds):
            loop.append(loop_throughput(dataset, args.image_size, args.batch, args.steps, args.warmup))
            trainer.append(trainer_throughput(dataset, args.image_size, args.batch, args.steps, args.warmup))
    print(f"plain loop: {max(loop):.2f} img/s   Trainer: {max(trainer):.2f} img/s   "
          f"(ResNet-50 ASFF, {args.image_size} px, batch {args.batch}, best of {args.rounds})")
    print(f"trainer/loop throughput ratio: {max(trainer) / max(loop):.3f}")


if __name__ == "__main__":
    main()
