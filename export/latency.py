"""One timing rule for every latency figure the workbench reports."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(call: Callable[[], object], repeats: int = 5, iterations: int = 20) -> float:
    """Median over `repeats` of the mean time of `iterations` calls, after 5 warm-up calls."""
    for _ in range(5):
        call()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(iterations):
            call()
        timings.append((time.perf_counter() - started) / iterations)
    return statistics.median(timings)
