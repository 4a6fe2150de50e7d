"""Weight averaging in Trainer runs (`--weight_averaging ema|swa`, modeling.weight_averaging): the averaged weights
are what the evaluations see, the checkpoints hold and the run releases, while the optimizer keeps stepping on the
live weights."""

import json

import pytest
import torch
from helpers import TINY_TRAIN_ARGS, tiny_config
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback, TrainingArguments

import modeling.training as training
from modeling.modeling_asff_resnet import AsffResNetForImageClassification
from modeling.weight_averaging import WeightAveragingCallback
from train_hf import parse_args


class Recorder(TrainerCallback):
    """The live weights after each optimizer step, and the weights each step begins from."""

    def __init__(self):
        self.after_step, self.at_step_begin = [], []
        self.model = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model

    def _state(self):
        return float_state(self.model)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.after_step.append(self._state())

    def on_step_begin(self, args, state, control, **kwargs):
        self.at_step_begin.append(self._state())


def tiny_data(n: int = 16, size: int = 32) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    return [{"pixel_values": torch.randn(3, size, size, generator=generator), "labels": i % 2} for i in range(n)]


def train(tmp_path, method: str, decay: float = 0.5, load_best: bool = False, resume: str | None = None,
          epochs: int = 1):
    torch.manual_seed(0)
    model = AsffResNetForImageClassification(tiny_config())
    averaging, recorder = WeightAveragingCallback(method, decay), Recorder()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=epochs,
                             learning_rate=0.05, lr_scheduler_type="constant", eval_strategy="steps", eval_steps=1,
                             save_strategy="steps", save_steps=1, report_to="none", disable_tqdm=True,
                             load_best_model_at_end=load_best, metric_for_best_model="loss", greater_is_better=False,
                             dataloader_num_workers=0, use_cpu=True)
    data = tiny_data()
    # the recorder runs after the averaging callback, so at step begin it sees what the optimizer will step on
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:8],
                      callbacks=[averaging, recorder])
    trainer.train(resume_from_checkpoint=resume)
    return trainer, recorder


def expected_average(steps: list[dict], method: str, decay: float) -> dict:
    average = steps[0]
    for k, step in enumerate(steps[1:], start=2):
        if method == "swa":
            average = {name: average[name] + (step[name] - average[name]) / k for name in step}
        else:
            average = {name: decay * average[name] + (1 - decay) * step[name] for name in step}
    return average


def assert_same(actual: dict, expected: dict, what: str):
    for name, value in expected.items():
        torch.testing.assert_close(actual[name].float(), value, rtol=1e-5, atol=1e-6, msg=f"{what}: {name}")


def float_state(model) -> dict:
    """Weights and BatchNorm statistics (not its integer step counter)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


@pytest.mark.parametrize("method", ["swa", "ema"])
def test_the_run_ends_with_the_average_and_trains_on_the_live_weights(tmp_path, method):
    trainer, recorder = train(tmp_path, method)
    steps = recorder.after_step
    assert len(steps) == 4
    assert_same(float_state(trainer.model), expected_average(steps, method, 0.5), "released weights")
    # every step after an evaluation begins from the last step's own weights, not from the average swapped in
    for k in range(1, len(steps)):
        assert_same(recorder.at_step_begin[k], steps[k - 1], f"step {k + 1} begins from")
    weight = "asff_resnet.backbone.embedder.embedder.convolution.weight"
    assert not torch.equal(steps[-1][weight], trainer.model.state_dict()[weight])  # the average is not the last step


def test_checkpoints_hold_the_average_and_the_best_is_loaded(tmp_path):
    trainer, recorder = train(tmp_path, "swa", load_best=True)
    steps = recorder.after_step
    for k in range(1, len(steps) + 1):
        saved = load_file(str(tmp_path / f"checkpoint-{k}" / "model.safetensors"))
        assert_same(saved, expected_average(steps[:k], "swa", 0.5), f"checkpoint-{k}")
    best = load_file(str(tmp_path / trainer.state.best_model_checkpoint.split("/")[-1] / "model.safetensors"))
    assert_same(float_state(trainer.model), {k: v for k, v in best.items() if v.is_floating_point()},
                "the best checkpoint")


@pytest.mark.parametrize("method", ["swa", "ema"])
def test_a_resumed_run_ends_as_the_uninterrupted_one(tmp_path, method):
    """Each checkpoint keeps the average's state and the live weights: resuming from the middle of a run goes on
    from the live weights and extends the same average, so it ends with the same weights as the run that was not
    interrupted (without them it would train on the average, and start a new one)."""
    whole, _ = train(tmp_path / "whole", method, epochs=2)
    partial = tmp_path / "partial"
    train(partial, method, epochs=2)
    resumed, recorder = train(partial, method, epochs=2, resume=str(partial / "checkpoint-3"))
    assert len(recorder.after_step) == 5  # steps 4 to 8
    assert_same(float_state(resumed.model), float_state(whole.model), "resumed run")


def test_train_hf_records_the_averaging(image_folder, tmp_path):
    out = tmp_path / "run"
    config_dir = tmp_path / "config"
    tiny_config().save_pretrained(config_dir)
    training.main(*parse_args(["--dataset", str(image_folder), "--config_name", str(config_dir), "--output_dir",
                               str(out), "--num_train_epochs", "1", "--weight_averaging", "ema",
                               "--weight_averaging_decay", "0.9", "--cam_frame_share", "false", *TINY_TRAIN_ARGS]))
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert settings["weight_averaging"] == "exponential moving average (decay 0.9 per step)"
    assert "exponential moving average" in (out / "README.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--weight_averaging", "ema", "--weight_averaging_decay", "1.5"], "must lie in (0, 1)"),
    (["--weight_averaging", "swa", "--skip_training", "true", "--model_name_or_path", "m"], "--skip_training"),
    (["--weight_averaging", "swa", "--do_eval_only", "true", "--model_name_or_path", "m"], "--do_eval_only"),
])
def test_averaging_options_that_cannot_work_are_usage_errors(tmp_path, extra, message):
    with pytest.raises(training.UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        training.main(*parse_args(["--dataset", "d", "--output_dir", str(tmp_path), *extra]))


def test_an_unknown_method_is_refused():
    with pytest.raises(ValueError, match="one of"):
        WeightAveragingCallback("mean")
