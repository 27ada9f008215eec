"""Loader workers and Ctrl-C: a terminal signals the whole process group, workers included."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.datamodule import leave_interrupts_to_training


class Numbers(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> torch.Tensor:
        time.sleep(0.05)  # 0.2 s a batch, 1.6 s of work per worker: the signal lands while both are busy
        return torch.tensor(index)


@pytest.fixture(autouse=True)
def python_s_own_ctrl_c():
    """Workers fork from this process and inherit its SIGINT handler; an earlier test may have left another."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _interrupt_workers_then_drain(worker_init_fn) -> list[int]:
    loader = DataLoader(Numbers(), batch_size=4, num_workers=2, worker_init_fn=worker_init_fn)
    iterator = iter(loader)
    seen = [int(v) for v in next(iterator)]
    time.sleep(0.3)  # the workers are past their init function
    for worker in iterator._workers:
        os.kill(worker.pid, signal.SIGINT)
    time.sleep(0.3)
    return seen + [int(v) for batch in iterator for v in batch]


def test_a_ctrl_c_that_reaches_the_loader_workers_leaves_them_serving():
    assert _interrupt_workers_then_drain(leave_interrupts_to_training) == list(range(64))


def test_without_it_a_worker_dies_of_the_ctrl_c_and_ends_the_epoch():
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        _interrupt_workers_then_drain(None)
