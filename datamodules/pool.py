"""The process pool that builds caches (render and ingest)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

# Imported once by the forkserver, so that each worker starts with them loaded instead of spending
# seconds importing torch and pandas itself.
PRELOAD = [
    "datamodules.cache",
    "datamodules.integrity",
    "datamodules.synthetic.content",
    "datamodules.synthetic.faces",
    "datamodules.synthetic.streams",
]


def worker_pool(workers: int, initializer: Callable[[], None] | None = None) -> ProcessPoolExecutor:
    """A pool whose workers start from a fresh forkserver, never from a fork of this process.

    Forking a process that runs threads (rich's progress refresh, MLflow's logging, torch's
    OpenMP pool) can copy a lock another thread holds into the child, which then waits on it
    forever; that hang was seen in CI while the smoke dataset rendered. The forkserver is a fresh
    interpreter with no threads of ours, so its children hold no such lock.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return ProcessPoolExecutor(max(1, workers), mp_context=context, initializer=initializer)
