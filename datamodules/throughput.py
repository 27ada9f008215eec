"""Does the loader keep up? Images/s the cached loader delivers vs images/s a training step consumes.

Both are measured on their own, on the same machine: the loader with its worker processes
iterating the shuffled train split, and the training step (forward, backward, AdamW update) of
the configured model on batches already in memory. Their ratio says how much slack the loader has.
"""

from __future__ import annotations

import time

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig


def loader_images_per_second(datamodule, workers: int, seconds: float) -> float:
    """Shuffled train batches from the cache through `workers` processes, after one warm-up batch."""
    datamodule.num_workers = workers
    loader = datamodule.train_dataloader()
    images, started = 0, None
    while started is None or time.perf_counter() - started < seconds:
        for batch in loader:
            if started is None:
                started = time.perf_counter()  # worker start-up is paid once per run, not per step
                continue
            images += len(batch["image"])
            if time.perf_counter() - started >= seconds:
                break
    return images / (time.perf_counter() - started)


def train_step_images_per_second(model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int) -> float:
    """Forward, backward and optimiser update of `model` on one in-memory batch, after one warm-up step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for step in range(steps + 1):
        if step == 1:
            started = time.perf_counter()
        optimizer.zero_grad()
        model.training_step(batch, step).backward()
        optimizer.step()
    return steps * len(batch["image"]) / (time.perf_counter() - started)


def measure(cfg: DictConfig, workers: int = 2, seconds: float = 10.0, steps: int = 10) -> dict[str, float]:
    """Both rates and their ratio for the data and model the config names, at its batch size."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    batch = next(iter(datamodule.train_dataloader()))
    consumed = train_step_images_per_second(instantiate(cfg.model), batch, steps)
    delivered = loader_images_per_second(datamodule, workers, seconds)
    return {
        "batch_size": float(len(batch["image"])),
        "loader_images_per_s": delivered,
        "train_step_images_per_s": consumed,
        "ratio": delivered / consumed,
        "torch_threads": float(torch.get_num_threads()),
    }
