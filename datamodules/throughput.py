"""Does the loader keep up? The images/s the cached loader delivers on its own, with no training.

`childsafe bench` sets it beside the rate a training step consumes (tracking/bench.py); their ratio
says how much slack the loader has.
"""

from __future__ import annotations

import time


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
