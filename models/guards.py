"""Training guards: stop at the first non-finite loss or gradient, before it reaches the weights."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from core.errors import WorkbenchError


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
    """Stop on SIGTERM (pre-emption) or Ctrl-C at the end of a training step, write `last.ckpt` there, and say why.

    Lightning turns SIGTERM into an exception at the end of a training batch (or epoch), where the
    loop's state is consistent. Ctrl-C would raise KeyboardInterrupt anywhere (mid forward, mid
    optimizer step), and a checkpoint written then records a batch as started but not completed,
    so the first Ctrl-C is turned into Lightning's SIGTERM stop at the next step's end; a second one
    stops at once and writes nothing, keeping the last periodic checkpoint. A stop raised anywhere
    else (during validation or testing, a crash) writes nothing either: `last.ckpt` is then the
    periodic or epoch-end one, which resumes exactly. The train stage marks the MLflow run KILLED.
    """

    SIGINT_REASON = "SIGINT (Ctrl-C)"
    SIGTERM_REASON = "SIGTERM (pre-emption)"

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous_sigint = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning has put its SIGTERM handler in place; a SIGINT ignored on purpose (nohup) stays ignored.
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame) -> None:
        """Only records the request: a signal handler that wrote or raised here could tear whatever it interrupted."""
        if self.reason is not None:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.reason = self.SIGINT_REASON

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.reason == self.SIGINT_REASON and not trainer.received_sigterm:
            print(
                "\nCtrl-C: stopping at the end of this training step and saving last.ckpt there "
                "(resume with ckpt_path=last). Press Ctrl-C again to stop at once without saving.",
                file=sys.stderr,
            )
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's own graceful stop, raised at this step's end

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        if isinstance(exception, KeyboardInterrupt):
            self.reason = self.SIGINT_REASON
            return  # raised wherever it landed: nothing consistent to save, the periodic last.ckpt stays
        if not isinstance(exception, SIGTERMException):
            return  # a crash: the same
        self.reason = self.reason or self.SIGTERM_REASON
        checkpoint = trainer.checkpoint_callback
        if trainer.training and checkpoint is not None and checkpoint.dirpath:
            trainer.save_checkpoint(Path(checkpoint.dirpath) / "last.ckpt")  # atomic: models/checkpointing.py
