#!/usr/bin/env python
"""Train, evaluate and publish ASFF-ResNet (arXiv 2510.03876) or a baseline CNN with the Hugging Face Trainer.

In the style of transformers' `examples/pytorch/image-classification/run_image_classification.py`; the logic lives
in `modeling.training`. Examples:

    python train_hf.py --dataset ../shared/data/isic2020-part --output_dir runs/asff --fusion_mode channel \
        --image_size 128 --num_train_epochs 8 --learning_rate 1e-3
    python train_hf.py --do_eval_only --model_name_or_path checkpoints/asff-resnet50-isic2020 \
        --dataset ../shared/data/isic2020-part --output_dir runs/eval
"""

import dataclasses
import logging
import sys

import transformers
from transformers import HfArgumentParser, TrainingArguments

from modeling.data import DataError
from modeling.training import (
    DataArguments,
    ModelArguments,
    UsageError,
    finished_run_lines,
    json_arguments,
    main,
)

DEFAULTS = {  # the recipe's defaults; every one can be overridden on the command line or in a JSON file
    "eval_strategy": "epoch", "save_strategy": "epoch", "load_best_model_at_end": True,
    "metric_for_best_model": "roc_auc", "greater_is_better": True, "save_total_limit": 2,
    "remove_unused_columns": False, "report_to": "none", "logging_steps": 10, "lr_scheduler_type": "cosine",
    "warmup_steps": 0.1, "weight_decay": 0.05, "learning_rate": 1e-3, "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64, "num_train_epochs": 8, "dataloader_pin_memory": False,
}


class ArgumentParser(HfArgumentParser):
    """HfArgumentParser with argparse's own checks for both forms (flags and JSON), no abbreviated flags
    (`--learning_rat` is a typo, not `--learning_rate`), and a short error: TrainingArguments' usage is ~140 lines."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n(python train_hf.py --help lists every option)\n")


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Command-line options, or one JSON file of them (`python train_hf.py cfg.json`); DEFAULTS apply to both."""
    parser = ArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    parser.set_defaults(**DEFAULTS)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        known = {f.name for dtype in parser.dataclass_types for f in dataclasses.fields(dtype) if f.init}
        try:
            argv = json_arguments(argv[0], known)
        except (OSError, ValueError) as error:
            parser.error(str(error))
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        parser.error(f"unknown option(s) {unknown}")
    return tuple(parsed)


def run(argv: list[str] | None = None) -> dict:
    """Parses the options and runs. A user error (bad data, bad arguments) is one line on stderr and exit code 2;
    anything else is a bug and keeps its traceback."""
    model_args, data_args, training_args = parse_args(argv)
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    try:
        result = main(model_args, data_args, training_args)
    except (DataError, UsageError) as error:
        logging.getLogger("train_hf").error("%s", error)
        sys.exit(2)
    if training_args.should_log:
        print("\n".join(finished_run_lines(result, training_args.output_dir)))
    return result


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    run()
