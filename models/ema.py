"""EMA of the weights: Lightning's `EMAWeightAveraging`, with the EMA weights kept for test after a fit."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


class EMAWeights(EMAWeightAveraging):
    """Validation swaps in the EMA weights, training's end copies them into the model, and a checkpoint's
    `state_dict` holds them (the raw weights ride along as `current_model_state`), so calibrate and
    export, which read `state_dict`, use them.

    Lightning's callback reloads the raw weights whenever it loads a checkpoint while its average
    exists, which includes `trainer.test(ckpt_path="best")` right after `fit`: test would then score the
    raw weights. Only a fit resumes training from the raw weights; every other stage keeps the EMA ones.
    """

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
