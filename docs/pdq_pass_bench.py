"""The measurement behind docs/benchmarks.md's "The cross-split PDQ pass": near_duplicates_across_splits on N random
PDQ hashes split 44/6/25/25, its time, hash pairs a second and peak memory (tracemalloc).

    .venv/bin/python docs/pdq_pass_bench.py 40000

Not a test: at 40,000 hashes it takes seconds to a minute.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import pandas as pd

from datamodules.integrity import near_duplicates_across_splits
from datamodules.manifest import SPLITS

FRACTIONS = {"train": 0.44, "val": 0.06, "calib": 0.25, "test": 0.25}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hashes", type=int)
    n = parser.parse_args().hashes
    rng = np.random.default_rng(0)
    pdq = pd.Series([bytes(h).hex() for h in rng.integers(0, 256, (n, 32), dtype=np.uint8)])
    split = pd.Series(rng.choice(list(FRACTIONS), n, p=list(FRACTIONS.values())))
    order = split.map({name: k for k, name in enumerate(SPLITS)}).to_numpy()
    pairs = sum(int((order == rank).sum()) * int((order < rank).sum()) for rank in range(1, len(SPLITS)))
    tracemalloc.start()
    began = time.perf_counter()
    near = near_duplicates_across_splits(pdq, split)
    seconds, peak = time.perf_counter() - began, tracemalloc.get_traced_memory()[1]
    print(
        f"{n} hashes, {pairs:.3g} pairs: {seconds:.1f} s, {pairs / seconds / 1e6:.1f} M pairs/s, "
        f"peak {peak / 2**20:.0f} MiB, near duplicates {int(near['leak'].sum())}"
    )


if __name__ == "__main__":
    main()
