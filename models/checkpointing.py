"""Checkpoints that survive a kill at any instant and resume to the same numbers.

Lightning's own save goes through a temporary file in the system temp folder; when that is on
another filesystem the final move is a copy, which a SIGKILL can leave half-written. Writing the
temporary file beside the target and renaming it makes the switch atomic on any local disk.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves via a temporary file in the target's folder (fsynced, then renamed); loads with `weights_only=True`."""

    @staticmethod
    def staging_path(path: Path) -> Path:
        return path.with_name(f".{path.name}.partial")

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.staging_path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialised first, so a full disk surfaces as OSError(ENOSPC)
        try:
            with staging.open("wb") as handle:
                handle.write(buffer.getbuffer())
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            staging.unlink(missing_ok=True)
            raise OSError(error.errno, error.strerror, str(staging)) from error  # name the file that did not fit
        os.replace(staging, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)


class RandomStateCheckpoint(L.Callback):
    """Carries the torch random state through checkpoints, so augmentation after a resume draws what it would have."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["random_state"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["random_state"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("random_state")
        if state is None:
            return  # a checkpoint written before this callback existed: resume, without the guarantee
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
