"""LightningDataModule over a cached image dataset: uint8 tensors in, normalisation in the model."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from childsafe_runtime.crop import CropConvention
from torch.utils.data import DataLoader, Dataset

from core.errors import WorkbenchError
from datamodules.augment import Augmentation, AugmentedBatches
from datamodules.cache import CachedDataset, cache_directory, materialise
from datamodules.preview import save_preview
from datamodules.resumable import SAMPLERS, ResumableLoader, ResumableShuffle, balanced_weights
from models.resize import Framing


def leave_interrupts_to_training(worker_id: int) -> None:
    """A loader worker ignores Ctrl-C: a terminal sends it to the whole process group, and the training
    process alone decides what it means (stop at the end of the step, models/guards.py). A worker that
    died of it would end the run mid-step instead. Lightning's worker seeding still runs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.environ.get("PL_SEED_WORKERS") == "1":  # set by seed_everything(workers=True), as Lightning reads it
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


def pass_through(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collate for datasets that already return whole batches (see `__getitems__`)."""
    return batch


class CachedImageDataset(Dataset):
    """Rows of a cached dataset; fetches a whole batch in one memory-mapped slice.

    Served at the network's input size: the centre of each cached image (models.resize.Framing), or,
    for training keys `(row, epoch, draw position)` from `ResumableShuffle`, the augmented image.
    """

    def __init__(
        self,
        images: np.ndarray,
        positions: np.ndarray,
        targets: np.ndarray,
        framing: Framing | None = None,
        augment: AugmentedBatches | None = None,
    ):
        self.images, self.positions, self.targets = images, positions, targets
        self.framing = framing or Framing(images.shape[1], images.shape[1])
        self.augment = augment if augment is not None and augment.draws_at_random else None

    def __len__(self) -> int:
        return len(self.positions)

    def __getitems__(self, keys: list) -> dict[str, torch.Tensor]:
        keys = np.asarray(keys)
        order = keys if keys.ndim == 1 else keys[:, 0]
        positions = self.positions[order]
        cached = np.asarray(self.images[positions])
        targets = torch.from_numpy(self.targets[order])
        if self.augment is not None and keys.ndim == 2:
            pixels, targets = self.augment(
                torch.from_numpy(cached).permute(0, 3, 1, 2), targets, keys[:, 1], keys[:, 2]
            )
        else:
            pixels = torch.from_numpy(np.ascontiguousarray(self.framing.centre_uint8(cached))).permute(0, 3, 1, 2)
        return {"image": pixels.contiguous(), "target": targets, "position": torch.from_numpy(positions)}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}


class CachedDataModule(L.LightningDataModule):
    """Serves a cached uint8 dataset split train/val/calib/test; subclasses say how the cache is built."""

    synthetic: bool
    task: str
    dataset_name: str
    licence: str

    def __init__(
        self,
        cache_dir: str,
        target: str,
        preview_columns: tuple[str, ...],
        shuffle_seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        render_workers: int = 2,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        sampler: str = "shuffle",
        sampler_max_ratio: float = 10.0,
        input_size: int | None = None,
        augment: Augmentation | None = None,
        slice_attributes: tuple[str, ...] = (),
        store: str | None = None,
        store_cache_bytes: int = 8 * 2**30,
    ):
        super().__init__()
        self.store, self.store_cache_bytes = store, store_cache_bytes  # sharded cache source (datamodules/shards.py)
        self.slice_attributes = list(slice_attributes)  # the columns evaluate and the contract slice by
        self.input_size = input_size
        self.augment = augment
        if sampler not in SAMPLERS:
            raise WorkbenchError(f"Unknown data.sampler={sampler!r}. Valid options: {list(SAMPLERS)}.")
        self.sampler, self.sampler_max_ratio = sampler, sampler_max_ratio
        self.cache_dir = cache_dir
        self.target = target
        self.preview_columns = tuple(preview_columns)
        self.shuffle_seed = shuffle_seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.render_workers = render_workers  # processes that build the cache (render or decode)
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.cached: CachedDataset | None = None

    def build(self) -> CachedDataset:
        raise NotImplementedError

    @property
    def store_name(self) -> str:
        """The cache folder name the shards at `data.store` must carry; a `<dataset>-` prefix where no more is known."""
        return f"{self.dataset_name}-"

    @property
    def cache_size(self) -> int:
        """The side of each cached image; the network sees its centre `input_size` square."""
        raise NotImplementedError

    @property
    def crop(self) -> CropConvention | None:
        """How each cached image was cut from its frame (faces), or None for whole frames."""
        return None

    @property
    def class_names(self) -> list[str] | None:
        return None

    @property
    def framing(self) -> Framing:
        try:
            return Framing(self.cache_size, self.input_size or self.cache_size)
        except ValueError as error:
            raise WorkbenchError(
                f"data.input_size={self.input_size} does not fit in the cached images ({self.cache_size} px): "
                "the cache must be at least as large as the network input."
            ) from error

    def load(self) -> CachedDataset:
        """The memory-mapped cache, built if need be; or, with `data.store`, its sharded copy read from there."""
        if self.cached is None and self.store is None:
            self.cached = self.build()
        elif self.cached is None:
            from datamodules.shards import open_sharded

            shards = Path(self.cache_dir) / "shards"
            self.cached = open_sharded(self.store, shards, self.store_cache_bytes, self.store_name)
        return self.cached

    def prepare_data(self) -> None:
        self.load()

    def data_record(self) -> dict[str, Any]:
        """What the export contract and model card say about the training data."""
        record = {
            "name": self.dataset_name,
            "licence": self.licence,
            "digest": self.load().digest,
            "synthetic": self.synthetic,
            "framing": self.framing.describe(),
        }
        if self.crop is not None:
            record["crop"] = self.crop_record()
        return record

    def crop_record(self) -> dict[str, Any]:
        """The face crop the cache holds, which the export contract states as `input.face_crop`."""
        crop, framing = self.crop, self.framing
        return {
            "margin": crop.margin,
            "square": crop.square,
            "min_face_side": crop.min_face_side,
            "size": framing.cache_size,
            "input_size": framing.input_size,
            "centre_offset": framing.offset,
            "function": "childsafe_runtime.crop.crop_face",
            "resize": "antialiased bilinear, half-pixel, rounded (models.resize.resize_uint8, as the graph)",
        }

    def log_provenance(self, client, run_id: str) -> None:
        """Extra lineage for the MLflow run; generated data has no card or quarantine report to add."""

    def split_manifest(self, split: str) -> pd.DataFrame:
        manifest = self.load().manifest
        return manifest[manifest["split"] == split]

    def dataset(self, split: str) -> CachedImageDataset:
        rows = self.split_manifest(split)
        dtype = np.float32 if self.task == "age" else np.int64
        augment = None
        if split == "train" and self.augment is not None:
            augment = AugmentedBatches(self.augment, self.framing, self.shuffle_seed, len(self.class_names or []))
        targets = rows[self.target].to_numpy(dtype)
        return CachedImageDataset(self.load().images, rows.index.to_numpy(), targets, self.framing, augment)

    def baseline_metrics(self, split: str = "test") -> dict[str, float]:
        """What a model that ignores the image scores: the training median age, or the majority class."""
        train, rows = self.split_manifest("train")[self.target], self.split_manifest(split)[self.target]
        if self.task == "age":
            return {f"{split}/age/baseline_mae": float((rows - train.median()).abs().mean())}
        return {f"{split}/content/baseline_accuracy": float((rows == train.mode().iloc[0]).mean())}

    def save_preview(self, path: Path) -> Path:
        return save_preview(self.load().images, self.split_manifest("train"), self.preview_columns, path)

    def _loader_options(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "collate_fn": pass_through,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.num_workers > 0,
            "prefetch_factor": self.prefetch_factor if self.num_workers > 0 else None,
            "worker_init_fn": leave_interrupts_to_training if self.num_workers > 0 else None,
        }

    def train_dataloader(self) -> ResumableLoader:
        """Shuffled from (shuffle_seed, epoch) and resumable mid-epoch (see datamodules/resumable.py)."""
        dataset = self.dataset("train")
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return ResumableLoader(
            dataset,
            sampler=ResumableShuffle(
                len(dataset),
                self.shuffle_seed,
                self.batch_size,
                self._train_batches_done,
                epoch,
                num_replicas=self.trainer.world_size if self.trainer is not None else 1,
                rank=self.trainer.global_rank if self.trainer is not None else 0,
                weights=self._sampling_weights(dataset),
            ),
            # its own generator, so making an iterator never consumes the global random state
            generator=torch.Generator().manual_seed(self.shuffle_seed),
            **self._loader_options(),
        )

    def _sampling_weights(self, dataset: CachedImageDataset) -> np.ndarray | None:
        """`data.sampler`: None to shuffle, else draw weights from the training split's label histogram."""
        if self.sampler == "shuffle":
            return None
        wanted = "age" if self.sampler == "age_balanced" else "content"
        if self.task != wanted:
            raise WorkbenchError(
                f"data.sampler={self.sampler} balances {wanted} labels, but this is {self.task} data. "
                f"Use data.sampler={'age_balanced' if self.task == 'age' else 'class_balanced'} or shuffle."
            )
        labels = np.floor(dataset.targets) if self.task == "age" else dataset.targets  # ages by whole year
        return balanced_weights(labels, self.sampler_max_ratio)

    def _train_batches_done(self) -> int:
        """Batches of the current epoch already trained: 0 at an epoch's start, k after resuming at batch k."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("val"), shuffle=False, **self._loader_options())

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("test"), shuffle=False, **self._loader_options())


class SyntheticDataModule(CachedDataModule):
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
        crop: dict[str, Any] | None = None,
        **loading: Any,
    ):
        super().__init__(cache_dir, target, preview_columns, **loading)
        self.generator = generator
        self._crop = CropConvention(**crop) if crop is not None else None
        drawn_at = getattr(generator, "margin", None)
        if drawn_at is not None and (self._crop is None or drawn_at != self._crop.margin):
            raise WorkbenchError(
                f"data.generator.margin={drawn_at} but data.crop.margin="
                f"{None if self._crop is None else self._crop.margin}: the faces must be drawn with the margin the "
                "export contract will state. Set data.crop.margin (the generator follows it)."
            )
        self.split_fractions = dict(split_fractions)
        self.split_seed = split_seed

    @property
    def task(self) -> str:
        return self.generator.task

    @property
    def dataset_name(self) -> str:
        return self.generator.name

    @property
    def licence(self) -> str:
        return self.generator.licence

    @property
    def cache_size(self) -> int:
        return self.generator.image_size

    @property
    def crop(self) -> CropConvention | None:
        """Faces are drawn as this crop would frame them (the generator's `margin`, set from `data.crop`)."""
        return self._crop

    @property
    def class_names(self) -> list[str] | None:
        return list(self.generator.classes) if self.task == "content" else None

    def build(self) -> CachedDataset:
        return materialise(self.generator, self.cache_dir, self.split_fractions, self.split_seed, self.render_workers)

    @property
    def store_name(self) -> str:
        return cache_directory(self.generator, self.cache_dir, self.split_fractions, self.split_seed).name

    def data_metrics(self) -> dict[str, float]:
        return self.generator.data_metrics()
