"""Age estimation: backbone + one of three age heads, with MAE and per-gate metrics."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError
from torchmetrics.classification import BinaryAUROC

from calibration.metrics import score_name
from models.age_heads import build_age_head
from models.base import EVAL_SPLITS, WorkbenchModule


class AgeModule(WorkbenchModule):
    task = "age"

    def __init__(
        self,
        backbone: dict[str, Any],
        head: dict[str, Any],
        optimizer: dict[str, Any],
        image_size: int = 64,
        max_age: int = 100,
        gates: tuple[int, ...] = (13, 16, 18),
        scheduler: str = "onecycle",
        cache_size: int | None = None,
    ):
        super().__init__(backbone, optimizer, image_size, scheduler, cache_size)
        self.save_hyperparameters()
        head_options = {k: v for k, v in head.items() if k != "kind"}
        self.head = build_age_head(head["kind"], self.backbone.out_features, max_age, **head_options)
        self.register_buffer("gates", torch.tensor(gates, dtype=torch.float32))
        self.metrics = nn.ModuleDict(
            {
                split: nn.ModuleDict(
                    {"mae": MeanAbsoluteError()}
                    | {f"gate{g}_auroc": BinaryAUROC() for g in gates}
                    | {f"gate{g}_brier": MeanSquaredError() for g in gates}
                )
                for split in EVAL_SPLITS
            }
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = self.head(self.features(images))
        return {
            "raw": raw,
            "expected_age": self.head.expected_age(raw),
            "prob_below": self.head.prob_below(raw, self.gates),
        }

    def step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        age = batch["target"]
        raw = self.head(self.features(batch["image"]))
        loss = self.head.loss(raw, age)
        self.log_loss(split, loss, len(age))
        if split not in self.metrics:
            return loss
        metrics = self.metrics[split]
        metrics["mae"](self.head.expected_age(raw), age)
        self.log(f"{split}/age/mae", metrics["mae"], prog_bar=True, batch_size=len(age))
        below = self.head.prob_below(raw, self.gates)
        brier = score_name("brier", calibrated=False)  # raw P(age < T), before calibration
        for column, gate in enumerate(self.hparams.gates):
            is_minor = (age < gate).long()
            metrics[f"gate{gate}_auroc"](below[:, column], is_minor)
            metrics[f"gate{gate}_brier"](below[:, column], is_minor.float())
            self.log(f"{split}/age/gate{gate}/auroc", metrics[f"gate{gate}_auroc"], batch_size=len(age))
            self.log(f"{split}/age/gate{gate}/{brier}", metrics[f"gate{gate}_brier"], batch_size=len(age))
        return loss
