"""Batch inference over a dataset split, with a progress bar; raw outputs kept for calibration."""

from __future__ import annotations

import numpy as np
import torch
from rich.progress import track
from torch.utils.data import DataLoader

from datamodules.datamodule import CachedImageDataset, pass_through
from models.base import WorkbenchModule


@torch.no_grad()
def predict(model: WorkbenchModule, dataset: CachedImageDataset, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Every forward output, concatenated over the split, plus `target` and `position` (manifest row)."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=pass_through)
    collected: dict[str, list[torch.Tensor]] = {}
    for batch in track(loader, description="Predicting", transient=True):
        outputs = model(batch["image"].to(model.device))
        for key, value in {**outputs, "target": batch["target"], "position": batch["position"]}.items():
            collected.setdefault(key, []).append(value.cpu())
    return {key: torch.cat(values) for key, values in collected.items()}


def as_numpy(outputs: dict[str, torch.Tensor], key: str) -> np.ndarray:
    return outputs[key].numpy().astype(np.float64) if outputs[key].is_floating_point() else outputs[key].numpy()
