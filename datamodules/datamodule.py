"""LightningDataModule over a cached image dataset: uint8 tensors in, normalisation in the model."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.cache import CachedDataset, materialise
from datamodules.preview import save_preview


def pass_through(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collate for datasets that already return whole batches (see `__getitems__`)."""
    return batch


class CachedImageDataset(Dataset):
    """Rows of a cached dataset; fetches a whole batch in one memory-mapped slice."""

    def __init__(self, images: np.ndarray, positions: np.ndarray, targets: np.ndarray):
        self.images, self.positions, self.targets = images, positions, targets

    def __len__(self) -> int:
        return len(self.positions)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        order = np.asarray(indices)
        positions = self.positions[order]
        pixels = torch.from_numpy(np.ascontiguousarray(self.images[positions])).permute(0, 3, 1, 2)
        return {
            "image": pixels.contiguous(),
            "target": torch.from_numpy(self.targets[order]),
            "position": torch.from_numpy(positions),
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}


class SyntheticDataModule(L.LightningDataModule):
    """Renders (once) and serves a synthetic dataset split train/val/calib/test by subject."""

    synthetic = True

    def __init__(
        self,
        generator,
        cache_dir: str,
        target: str,
        preview_columns: tuple[str, ...],
        split_fractions: dict[str, float],
        split_seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        render_workers: int = 2,
        pin_memory: bool = False,
    ):
        super().__init__()
        self.generator = generator
        self.cache_dir = cache_dir
        self.target = target
        self.preview_columns = tuple(preview_columns)
        self.split_fractions = dict(split_fractions)
        self.split_seed = split_seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.render_workers = render_workers
        self.pin_memory = pin_memory
        self.cached: CachedDataset | None = None

    @property
    def task(self) -> str:
        return self.generator.task

    def prepare_data(self) -> None:
        self.load()

    def load(self) -> CachedDataset:
        if self.cached is None:
            self.cached = materialise(
                self.generator, self.cache_dir, self.split_fractions, self.split_seed, self.render_workers
            )
        return self.cached

    def split_manifest(self, split: str) -> pd.DataFrame:
        manifest = self.load().manifest
        return manifest[manifest["split"] == split]

    def dataset(self, split: str) -> CachedImageDataset:
        rows = self.split_manifest(split)
        dtype = np.float32 if self.task == "age" else np.int64
        return CachedImageDataset(self.load().images, rows.index.to_numpy(), rows[self.target].to_numpy(dtype))

    def baseline_metrics(self, split: str = "test") -> dict[str, float]:
        """What a model that ignores the image scores: the training median age, or the majority class."""
        train, rows = self.split_manifest("train")[self.target], self.split_manifest(split)[self.target]
        if self.task == "age":
            return {f"{split}/age/baseline_mae": float((rows - train.median()).abs().mean())}
        return {f"{split}/content/baseline_accuracy": float((rows == train.mode().iloc[0]).mean())}

    def data_metrics(self) -> dict[str, float]:
        return self.generator.data_metrics()

    def save_preview(self, path: Path) -> Path:
        return save_preview(self.load().images, self.split_manifest("train"), self.preview_columns, path)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=pass_through,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
