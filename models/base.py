"""What the age and content modules share: uint8 in, normalisation as buffers, one step for all splits."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from core.errors import WorkbenchError
from models.backbones import build_backbone
from models.resize import Framing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCHEDULERS = ("onecycle", "warmup_cosine")
EVAL_SPLITS = ("val", "test")  # the splits whose metrics the task modules keep apart


class WorkbenchModule(L.LightningModule):
    """Backbone + task head; forward takes uint8 NCHW images so export can carry the preprocessing."""

    task: str

    def __init__(
        self,
        backbone: dict[str, Any],
        optimizer: dict[str, Any],
        image_size: int,
        scheduler: str = "onecycle",
        cache_size: int | None = None,
    ):
        super().__init__()
        if scheduler not in SCHEDULERS:
            raise WorkbenchError(
                f"Unknown schedule model.scheduler={scheduler!r}. Valid options: {list(SCHEDULERS)} "
                "(onecycle for training from scratch, warmup_cosine for fine-tuning a pretrained backbone)."
            )
        self.scheduler_name = scheduler
        # image_size is the network's input; the cache may hold a border around it (models.resize.Framing).
        self.framing = Framing(cache_size or image_size, image_size)
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
        return self.step(batch, "train")  # augmented in the loader (datamodules/augment.py)

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
        demo keeps the old single-decay behaviour with `decay_norms_and_biases: true`. With
        `layer_decay`, the backbone's layers are grouped by timm and each step down from the top
        multiplies its learning rate by that factor (BEiT's layer-wise decay).
        """
        config = self.optimizer_config
        lr, decay = config["lr"], config["weight_decay"]
        lr_mult = config.get("backbone_lr_mult", 1.0)
        decay_all = config.get("decay_norms_and_biases", False)
        layer_decay = config.get("layer_decay")
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, parameter in self.named_parameters():
            if parameter.requires_grad and not (layer_decay and name.startswith("backbone.")):
                in_backbone = name.startswith("backbone.")
                decayed = decay_all or parameter.ndim > 1
                groups.setdefault((in_backbone, decayed), []).append(parameter)
        listed = [
            {
                "params": params,
                "lr": lr * (lr_mult if in_backbone else 1.0),
                "weight_decay": decay if decayed else 0.0,
                # LearningRateMonitor logs lr-AdamW/<name>: which group a curve is, at a glance.
                "name": ("backbone" if in_backbone else "head") + ("" if decayed else "_no_decay"),
            }
            for (in_backbone, decayed), params in groups.items()
        ]
        return listed + (self._layer_decay_groups(lr * lr_mult, decay, decay_all, layer_decay) if layer_decay else [])

    def _layer_decay_groups(self, lr: float, decay: float, decay_all: bool, layer_decay: float) -> list[dict]:
        """timm's BEiT-style groups over the backbone's own block structure (its `group_matcher`)."""
        if not hasattr(self.backbone, "group_matcher"):
            raise WorkbenchError(
                "model.optimizer.layer_decay needs a timm backbone (model.backbone.name=timm:<name>): timm knows "
                "the block structure of its models, torchvision's models do not say it. For a torchvision backbone "
                "use model.optimizer.backbone_lr_mult, or set model.optimizer.layer_decay=null."
            )
        from timm.optim import param_groups_layer_decay

        grouped = param_groups_layer_decay(
            self.backbone, weight_decay=decay, layer_decay=layer_decay, weight_decay_exclude_1d=not decay_all
        )
        return [
            {
                "params": group["params"],
                "lr": lr * group["lr_scale"],
                "weight_decay": group["weight_decay"],
                "name": f"backbone_{index}_x{group['lr_scale']:.3g}" + ("" if group["weight_decay"] else "_no_decay"),
            }
            for index, group in enumerate(grouped)
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
