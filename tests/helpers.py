"""Test-only callbacks, referenced from configs as `helpers.<name>` (pytest puts tests/ on sys.path)."""

import lightning as L


class CrashAtEpoch(L.Callback):
    """Simulates a crash at the start of a given epoch, after earlier epochs were checkpointed."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"simulated crash at epoch {self.epoch}")
