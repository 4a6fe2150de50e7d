"""Weight averaging during Trainer training (`train_hf.py --weight_averaging ema|swa`): the averaged weights, not
the last step's, are what every evaluation sees, every checkpoint holds, the best-checkpoint selection compares and
the run releases. The averaging itself is torch's (`torch.optim.swa_utils.AveragedModel`)."""

from __future__ import annotations

import logging

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

WEIGHT_AVERAGING_METHODS = ("ema", "swa")


class WeightAveragingCallback(TrainerCallback):
    """Keeps a running average of the model's weights and buffers (BatchNorm statistics included), updated after
    every optimizer step: `ema`, an exponential moving average with `decay` per step (as timm's `--model-ema`); `swa`,
    the plain mean of every step's weights since training began (stochastic weight averaging, Izmailov et al. 2018,
    at whatever learning-rate schedule the run uses).

    Whenever the Trainer is about to log, evaluate or save (after `on_step_end` / `on_epoch_end`), the averaged
    weights are copied into the model; the live weights come back at the next `on_step_begin`, so the optimizer
    never steps on averaged weights. At the end of training the model holds the averaged weights, unless
    `load_best_model_at_end` has just loaded the best checkpoint (which holds averaged weights too).

    Not carried across `--resume_from_checkpoint`: a resumed run starts a new average from the checkpoint's
    (averaged) weights."""

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
