"""Explicit-content classification: softmax over the configured classes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassCalibrationError

from calibration.metrics import ECE_BINS, score_name
from models.base import EVAL_SPLITS, WorkbenchModule


class ContentModule(WorkbenchModule):
    task = "content"

    def __init__(
        self,
        backbone: dict[str, Any],
        optimizer: dict[str, Any],
        classes: tuple[str, ...] = ("safe", "suggestive", "explicit"),
        image_size: int = 64,
        class_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
        scheduler: str = "onecycle",
        cache_size: int | None = None,
    ):
        super().__init__(backbone, optimizer, image_size, scheduler, cache_size)
        self.save_hyperparameters()
        n = len(classes)
        self.classifier = nn.Linear(self.backbone.out_features, n)
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        self.metrics = nn.ModuleDict(
            {
                split: nn.ModuleDict(
                    {
                        "accuracy": MulticlassAccuracy(n, average="micro"),
                        "auroc": MulticlassAUROC(n, average="macro"),
                        # Raw softmax, before calibration: never named like evaluate's calibrated ECE.
                        score_name("ece", calibrated=False): MulticlassCalibrationError(n, n_bins=ECE_BINS, norm="l1"),
                    }
                )
                for split in EVAL_SPLITS
            }
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.classifier(self.features(images))
        return {"logits": logits, "probs": logits.softmax(dim=1)}

    def step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        label = batch["target"]
        logits = self.classifier(self.features(batch["image"]))
        loss = self.criterion(logits, label)
        self.log_loss(split, loss, len(label))
        if split in self.metrics:
            for name, metric in self.metrics[split].items():
                metric(logits.softmax(dim=1), label)
                self.log(f"{split}/content/{name}", metric, prog_bar=name == "accuracy", batch_size=len(label))
        return loss
