"""Weight averaging during Trainer training (`train_hf.py --weight_averaging ema|swa`): the averaged weights, not
the last step's, are what every evaluation sees, every checkpoint holds, the best-checkpoint selection compares and
the run releases. The averaging itself is torch's (`torch.optim.swa_utils.AveragedModel`)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

WEIGHT_AVERAGING_METHODS = ("ema", "swa")
# Beside each Trainer checkpoint (whose model file holds the average): the average's state and the live weights, so
# that --resume_from_checkpoint goes on training the live weights and extending the same average.
STATE_FILE = "weight_averaging.pt"


class WeightAveragingCallback(TrainerCallback):
    """Keeps a running average of the model's weights and buffers (BatchNorm statistics included), updated after
    every optimizer step: `ema`, an exponential moving average with `decay` per step (as timm's `--model-ema`); `swa`,
    the plain mean of every step's weights since training began (stochastic weight averaging, Izmailov et al. 2018,
    at whatever learning-rate schedule the run uses).

    Whenever the Trainer is about to evaluate or save (after `on_step_end` / `on_epoch_end`), or training stops, the
    averaged weights are copied into the model; the live weights come back at the next `on_step_begin`, so the
    optimizer never steps on averaged weights. At the end of training the model holds the averaged weights, unless
    `load_best_model_at_end` has just loaded the best checkpoint (which holds averaged weights too).

    Each checkpoint also gets `weight_averaging.pt` (the average's state and the live weights): a run resumed from it
    (`--resume_from_checkpoint`) trains on from the live weights and extends the same average, as if uninterrupted. A
    checkpoint without it (saved without averaging) starts a new average from its weights, with a warning."""

    def __init__(self, method: str = "ema", decay: float = 0.999):
        if method not in WEIGHT_AVERAGING_METHODS:
            raise ValueError(f"weight averaging must be one of {WEIGHT_AVERAGING_METHODS}, got {method!r}")
        if method == "ema" and not 0.0 < decay < 1.0:
            raise ValueError(f"the moving average's decay must lie in (0, 1), got {decay}")
        self.method, self.decay = method, decay
        self.averaged: AveragedModel | None = None
        self._live: dict[str, torch.Tensor] | None = None  # the model's own weights while the average is swapped in
        self._model: torch.nn.Module | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._model = model
        multi_avg_fn = get_ema_multi_avg_fn(self.decay) if self.method == "ema" else None  # None: the plain mean
        self.averaged = AveragedModel(model, multi_avg_fn=multi_avg_fn, use_buffers=True)
        self._live = None
        if state.global_step > 0:  # resumed: the Trainer has loaded checkpoint-<step>, which holds the average
            self._resume(Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE)

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and args.should_save:
            live = self._live if self._live is not None else self._model.state_dict()
            torch.save({"method": self.method, "decay": self.decay, "averaged": self.averaged.state_dict(),
                        "live": {name: tensor.detach().cpu() for name, tensor in live.items()}}, folder / STATE_FILE)

    def _resume(self, path: Path) -> None:
        if not path.is_file():
            logger.warning("%s not found: the weight average starts again from the checkpoint's weights", path)
            return
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if (saved["method"], saved["decay"]) != (self.method, self.decay):
            logger.warning("the checkpoint averaged with %s (decay %s), this run with %s (decay %s): the average "
                           "starts again", saved["method"], saved["decay"], self.method, self.decay)
            return
        self.averaged.load_state_dict(saved["averaged"])
        self._copy(saved["live"], self._model)  # train on from the live weights, not the average

    def on_step_begin(self, args, state, control, **kwargs):
        self._restore_live()

    def on_step_end(self, args, state, control, **kwargs):
        self.averaged.update_parameters(self._model)
        self._swap_in_if_needed(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._swap_in_if_needed(control)

    def on_train_end(self, args, state, control, **kwargs):
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            self._live = None  # the best checkpoint, already loaded, holds averaged weights
            return
        self._restore_live()
        self._copy(self.averaged.module.state_dict(), self._model)  # release the average
        logger.info("the model now holds the %s of its weights", self.description())

    def description(self) -> str:
        return (f"exponential moving average (decay {self.decay} per step)" if self.method == "ema"
                else "mean over every training step (SWA)")

    def _swap_in_if_needed(self, control) -> None:
        if self._live is None and (control.should_evaluate or control.should_save or control.should_training_stop):
            self._live = {name: tensor.detach().clone() for name, tensor in self._model.state_dict().items()}
            self._copy(self.averaged.module.state_dict(), self._model)

    def _restore_live(self) -> None:
        if self._live is not None:
            self._copy(self._live, self._model)
            self._live = None

    @staticmethod
    @torch.no_grad()
    def _copy(source: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
        # In place, so the optimizer's references to the parameters (and the memory format) stay valid.
        for name, tensor in model.state_dict().items():
            tensor.copy_(source[name])
