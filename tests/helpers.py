"""Test-only callbacks, referenced from configs as `helpers.<name>` (pytest puts tests/ on sys.path)."""

import lightning as L
import torch


class CrashAtEpoch(L.Callback):
    """Simulates a crash at the start of a given epoch, after earlier epochs were checkpointed."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"simulated crash at epoch {self.epoch}")


class PoisonWeights(L.Callback):
    """Simulates a numerical blow-up: sets one weight to NaN before a given training batch."""

    def __init__(self, batch: int):
        self.batch = batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx == self.batch:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


class Payload:
    """An arbitrary object a malicious checkpoint could smuggle in."""

    def __reduce__(self):
        return (print, ("this would have run",))
