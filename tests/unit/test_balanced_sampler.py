"""data.sampler=age_balanced|class_balanced: rare labels oversampled, capped, resumable, sharded per rank."""

import numpy as np
import pytest

from core.errors import WorkbenchError
from datamodules.datamodule import CachedDataModule, CachedImageDataset
from datamodules.resumable import ResumableShuffle, balanced_weights

BATCH = 16


class Ages(CachedDataModule):
    """97% adults and 3% minors: licensed face data is mostly adults."""

    task = "age"

    def dataset(self, split: str) -> CachedImageDataset:
        rng = np.random.default_rng(0)
        ages = np.concatenate([rng.uniform(18, 80, 970), rng.uniform(4, 18, 30)]).astype(np.float32)
        return CachedImageDataset(np.zeros((1000, 2, 2, 3), np.uint8), np.arange(1000), ages)


def ages_module(sampler: str) -> Ages:
    return Ages("unused", "age", ("age",), batch_size=BATCH, sampler=sampler)


def drawn_ages(sampler: str) -> np.ndarray:
    module = ages_module(sampler)
    loader = module.train_dataloader()
    return module.dataset("train").targets[[row for row, _, _ in loader.sampler]]  # keys (row, epoch, position)


def test_age_balanced_oversamples_minors():
    assert np.mean(drawn_ages("shuffle") < 18) == pytest.approx(0.03)  # a permutation: every image once
    # 14 of the 76 one-year bins, each drawn as often as any other: ~18% of the draws, 6x the shuffle's.
    assert np.mean(drawn_ages("age_balanced") < 18) > 0.12


def test_weights_are_capped_at_the_ratio():
    labels = np.array([0] * 1000 + [1] * 10 + [2])
    weights = balanced_weights(labels, max_ratio=10.0)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[-1] / weights[0] == pytest.approx(10.0)  # the single image: 1000x rarer, capped at 10x
    assert weights[1000] / weights[0] == pytest.approx(10.0)


def sampler(batches_done: int = 0, rank: int = 0, replicas: int = 1, epoch: int = 3) -> ResumableShuffle:
    weights = balanced_weights(np.arange(100) % 7 == 0)
    return ResumableShuffle(100, 5, BATCH, lambda: batches_done, epoch, replicas, rank, weights=weights)


def test_a_restart_mid_epoch_continues_the_same_draw():
    full = list(sampler())
    assert list(sampler(batches_done=2)) == full[2 * BATCH :]
    assert list(sampler()) == full  # a pure function of (seed, epoch)
    assert list(sampler(epoch=4)) != full


def test_two_ranks_take_disjoint_shards_of_one_draw():
    rank0, rank1 = list(sampler(rank=0, replicas=2)), list(sampler(rank=1, replicas=2))
    assert len(rank0) == len(rank1) == 50
    interleaved = [index for pair in zip(rank0, rank1, strict=True) for index in pair]
    assert interleaved == list(sampler())  # every draw position on exactly one rank


def test_an_unknown_sampler_lists_the_valid_ones():
    with pytest.raises(WorkbenchError, match=r"data.sampler='balanced'.*'shuffle', 'age_balanced', 'class_balanced'"):
        ages_module("balanced")


def test_class_balanced_on_age_data_says_which_sampler_fits():
    with pytest.raises(
        WorkbenchError, match=r"balances content labels, but this is age data.*data.sampler=age_balanced"
    ):
        ages_module("class_balanced").train_dataloader()
