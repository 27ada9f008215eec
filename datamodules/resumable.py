"""A training loader that can stop anywhere in an epoch and resume at the very next batch.

The shuffle (or, with `data.sampler=age_balanced|class_balanced`, a draw that oversamples rare
labels) is a pure function of (seed, epoch), and where an epoch starts is read from the
training loop's own progress when the epoch's iteration begins. Reading it then, rather than
relying on Lightning to hand the loader its saved state, matters: when the LR schedule asks for
`estimated_stepping_batches`, Lightning builds the train loader before it restores the
checkpoint and never passes the loader's saved state back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, DistributedSampler

SAMPLERS = ("shuffle", "age_balanced", "class_balanced")


def balanced_weights(labels: np.ndarray, max_ratio: float = 10.0) -> np.ndarray:
    """Draw probabilities inversely proportional to each label's count in the training split.

    Capped at `max_ratio` times the commonest label's weight: a label seen twice would otherwise be
    drawn as often as one seen a thousand times, and the model would memorise those two images.
    """
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    weights = np.minimum(1.0 / counts, max_ratio / counts.max())[inverse]
    return weights / weights.sum()


class ResumableShuffle(DistributedSampler):
    """A fresh permutation each epoch, drawn from (seed, epoch) alone, skipping what this epoch already trained.

    It yields keys (row, epoch, position), not bare rows: a sample's augmentation is drawn from its key
    (datamodules/augment.py), so an image drawn twice in an epoch is augmented twice, differently.

    Given `weights`, each epoch is instead `length` indices drawn with replacement by those
    probabilities (rare labels repeat, common ones are left out), from the same (seed, epoch).

    Under DDP each rank takes every `num_replicas`-th index of the same permutation, padded as
    DistributedSampler pads, so the shards are disjoint and a resumed rank skips only its own
    batches. Being a DistributedSampler, it is kept by Lightning rather than wrapped in another.
    """

    def __init__(
        self,
        length: int,
        seed: int,
        batch_size: int,
        batches_done: Callable[[], int],
        epoch: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        weights: np.ndarray | None = None,
    ):
        super().__init__(range(length), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.length, self.batch_size, self.epoch = length, batch_size, epoch
        self.batches_done = batches_done
        self.weights = weights

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        """Keys (row, epoch, position in the epoch's draw): the row to load, and what seeds its augmentation."""
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is None:
            order = rng.permutation(self.length)
        else:
            order = rng.choice(self.length, size=self.length, p=self.weights)
        positions = np.arange(self.total_size)[self.rank :: self.num_replicas]
        shard = np.resize(order, self.total_size)[positions]
        start = self.batches_done() * self.batch_size
        for row, position in zip(shard[start:].tolist(), positions[start:].tolist(), strict=True):
            yield row, self.epoch, position

    def __len__(self) -> int:
        return self.num_samples  # the full shard: Lightning counts a resumed epoch's batches from its own progress


class ResumableLoader(DataLoader):
    """A DataLoader over a `ResumableShuffle`; its state (epoch, batches trained) is saved in every checkpoint.

    Having `state_dict`/`load_state_dict` is what tells Lightning the loader resumes mid-epoch.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ResumableShuffle):
            raise TypeError("ResumableLoader needs a ResumableShuffle sampler.")

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches_done": int(self.sampler.batches_done())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(state["epoch"])  # the position itself comes from the restored loop progress
