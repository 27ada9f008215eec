"""What the age and content modules share: uint8 in, normalisation as buffers, one step for all splits."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from models.backbones import build_backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WorkbenchModule(L.LightningModule):
    """Backbone + task head; forward takes uint8 NCHW images so export can carry the preprocessing."""

    task: str

    def __init__(self, backbone: dict[str, Any], optimizer: dict[str, Any], image_size: int):
        super().__init__()
        self.backbone = build_backbone(backbone["name"], image_size, backbone.get("weights"))
        self.optimizer_config = dict(optimizer)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone((images.float() - self.mean) / self.std)

    def step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        raise NotImplementedError

    def log_loss(self, split: str, loss: torch.Tensor, batch_size: int) -> None:
        """Per step while training; per epoch elsewhere, averaged over every rank's batches (one all-reduce)."""
        training = split == "train"
        self.log(f"{split}/{self.task}/loss", loss, prog_bar=training, batch_size=batch_size, sync_dist=not training)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        # Images trained on this epoch, summed over ranks: the check that DDP shards add up.
        self.log(
            f"train/{self.task}/samples",
            float(len(images)),
            on_step=False,
            on_epoch=True,
            reduce_fx="sum",
            sync_dist=True,
            batch_size=len(images),
        )
        flip = torch.rand(images.shape[0], 1, 1, 1, device=images.device) < 0.5
        return self.step({**batch, "image": torch.where(flip, images.flip(-1), images)}, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.step(batch, "test")

    def configure_optimizers(self):
        return self.build_optimizer(self.trainer.estimated_stepping_batches)

    def build_optimizer(self, total_steps: int) -> dict[str, Any]:
        """AdamW with a one-cycle schedule; apart from Lightning so a plain loop can train identically (bench)."""
        config = self.optimizer_config
        optimizer = torch.optim.AdamW(self.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config["lr"],
            total_steps=total_steps,
            pct_start=config.get("warmup_fraction", 0.15),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
