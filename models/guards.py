"""Training guards: stop at the first non-finite loss or gradient, before it reaches the weights."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from tracking.errors import WorkbenchError


class FiniteGuard(L.Callback):
    """Raises within the step where a loss or gradient stops being finite, naming the step and the rows.

    Checked before the optimizer step, so the weights (and any checkpoint written later) never hold
    NaN; the run then ends FAILED in MLflow with this message.
    """

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.batch_idx = -1

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.rows, self.batch_idx = batch["position"][:16].tolist(), batch_idx

    def _stop(self, trainer: L.Trainer, what: str) -> None:
        raise WorkbenchError(
            f"{what} at global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self.batch_idx}; "
            f"first manifest rows of the batch: {self.rows}). Training stopped before the weights were updated; "
            "lower model.optimizer.lr, check these images and labels, or resume from the last checkpoint."
        )

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            self._stop(trainer, f"The training loss became {loss.detach().float().item()}")

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        grads = [p.grad.detach() for p in pl_module.parameters() if p.grad is not None]
        if not grads or torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            return  # one fused norm and one device sync per step; names are looked up only on failure
        culprit = next(
            name for name, p in pl_module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()
        )
        self._stop(trainer, f"The gradient of {culprit} became non-finite")


class InterruptionCheckpoint(L.Callback):
    """On SIGTERM (pre-emption) or Ctrl-C, write `last.ckpt` and remember why the run stopped.

    Lightning turns SIGTERM into an exception at the end of a training batch, so the saved state is
    a consistent one; the train stage then marks the MLflow run KILLED with this reason.
    """

    def __init__(self) -> None:
        self.reason: str | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            self.reason = "SIGTERM (pre-emption)"
        elif isinstance(exception, KeyboardInterrupt):
            self.reason = "SIGINT (Ctrl-C)"
        else:
            return
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.dirpath:
            trainer.save_checkpoint(Path(checkpoint.dirpath) / "last.ckpt")  # atomic: models/checkpointing.py
