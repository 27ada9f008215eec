"""What the age and content modules share: uint8 in, normalisation as buffers, one step for all splits."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from models.backbones import build_backbone
from tracking.errors import WorkbenchError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCHEDULERS = ("onecycle", "warmup_cosine")


class WorkbenchModule(L.LightningModule):
    """Backbone + task head; forward takes uint8 NCHW images so export can carry the preprocessing."""

    task: str

    def __init__(
        self, backbone: dict[str, Any], optimizer: dict[str, Any], image_size: int, scheduler: str = "onecycle"
    ):
        super().__init__()
        if scheduler not in SCHEDULERS:
            raise WorkbenchError(
                f"Unknown schedule model.scheduler={scheduler!r}. Valid options: {list(SCHEDULERS)} "
                "(onecycle for training from scratch, warmup_cosine for fine-tuning a pretrained backbone)."
            )
        self.scheduler_name = scheduler
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

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: backbone vs head (a pretrained backbone wants a smaller step), decayed vs not.

        Norm scales and biases are 1-D; decaying them only pulls BatchNorm/LayerNorm towards zero
        and hurts fine-tuning, so they get no weight decay (timm's rule: ndim <= 1). The from-scratch
        demo keeps the old single-decay behaviour with `decay_norms_and_biases: true`.
        """
        config = self.optimizer_config
        lr, decay = config["lr"], config["weight_decay"]
        lr_mult = config.get("backbone_lr_mult", 1.0)
        decay_all = config.get("decay_norms_and_biases", False)
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, parameter in self.named_parameters():
            if parameter.requires_grad:
                in_backbone = name.startswith("backbone.")
                decayed = decay_all or parameter.ndim > 1
                groups.setdefault((in_backbone, decayed), []).append(parameter)
        return [
            {
                "params": params,
                "lr": lr * (lr_mult if in_backbone else 1.0),
                "weight_decay": decay if decayed else 0.0,
                # LearningRateMonitor logs lr-AdamW/<name>: which group a curve is, at a glance.
                "name": ("backbone" if in_backbone else "head") + ("" if decayed else "_no_decay"),
            }
            for (in_backbone, decayed), params in groups.items()
        ]

    def build_optimizer(self, total_steps: int) -> dict[str, Any]:
        """AdamW, one-cycle or warm-up + cosine; apart from Lightning so a plain loop can train identically (bench)."""
        config = self.optimizer_config
        groups = self.parameter_groups()
        optimizer = torch.optim.AdamW(groups)
        warmup_fraction = config.get("warmup_fraction", 0.15)
        if self.scheduler_name == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=[g["lr"] for g in groups], total_steps=total_steps, pct_start=warmup_fraction
            )
        else:
            warmup = max(1, round(warmup_fraction * total_steps))
            scheduler = torch.optim.lr_scheduler.SequentialLR(
                optimizer,
                [
                    torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=warmup),
                    torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup)),
                ],
                milestones=[warmup],
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
