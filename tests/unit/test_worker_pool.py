"""The cache-building pool must not inherit locks that this process's threads hold."""

from __future__ import annotations

import threading

from datamodules.pool import worker_pool

HELD = threading.Lock()


def take_the_lock() -> bool:
    """In a forked child the lock would still be held by a thread that does not exist there."""
    return HELD.acquire(timeout=10)


def test_a_worker_does_not_inherit_a_lock_held_by_another_thread():
    release = threading.Event()
    taken = threading.Event()

    def hold() -> None:
        with HELD:
            taken.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait()
    try:
        with worker_pool(1) as pool:
            assert pool.submit(take_the_lock).result(timeout=60), "the worker was forked with the lock held"
    finally:
        release.set()
        holder.join()
