"""The measurement behind docs/data-formats.md: write ~200 MB of 64 px uint8 crops in each candidate shard format,
then time the write, a sequential pass and random-access batches of 128 (what ResumableShuffle asks for).

    python -m pip install --target /tmp/fmtbench/lib --no-deps litdata webdataset mosaicml-streaming ...
    unshare -rn env PYTHONPATH=/tmp/fmtbench/lib .venv/bin/python docs/data_formats_bench.py /tmp/fmt

`unshare -rn` runs it with no network at all, which is the offline check. Not a test: the libraries are not
dependencies of the workbench (only the chosen format is).
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

N, SIDE, BATCH, BATCHES, SHARD_BYTES = 16_000, 64, 128, 40, 64 * 2**20


def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(N, SIDE, SIDE, 3), dtype=np.uint8)


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def random_batches() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.choice(N, BATCH, replace=False) for _ in range(BATCHES)]


def bench_memmap(root: Path, pixels: np.ndarray) -> dict:
    """The one-machine default, for reference: one images.npy, fancy-indexed through a memory map."""
    root.mkdir(parents=True)
    write = timed(lambda: np.save(root / "images.npy", pixels))
    images = np.load(root / "images.npy", mmap_mode="r")
    sequential = timed(lambda: [np.array(images[i : i + BATCH]) for i in range(0, N, BATCH)])
    random = timed(lambda: [images[b] for b in random_batches()])
    return {"write_s": write, "sequential_img_s": N / sequential, "random_img_s": BATCHES * BATCH / random}


def bench_workbench_npy(root: Path, pixels: np.ndarray) -> dict:
    """The workbench's shards (datamodules/shards.py), read through a cold local cache from a folder store."""
    import pandas as pd

    from datamodules.object_store import FolderStore, LocalCache
    from datamodules.shards import ShardedImages, ShardIndex, write_shards

    folder = root / "cache"
    folder.mkdir(parents=True)
    np.save(folder / "images.npy", pixels)
    pd.DataFrame({"id": [str(i) for i in range(N)]}).to_parquet(folder / "manifest.parquet")
    store = FolderStore(root / "store")
    write = timed(lambda: write_shards(folder, store, shard_bytes=SHARD_BYTES))
    cache = LocalCache(store, root / "local", max_bytes=2**30)
    reader = ShardedImages(ShardIndex.read(store), cache)
    sequential = timed(lambda: [reader[np.arange(i, min(i + BATCH, N))] for i in range(0, N, BATCH)])
    random = timed(lambda: [reader[b] for b in random_batches()])
    return {"write_s": write, "sequential_img_s": N / sequential, "random_img_s": BATCHES * BATCH / random}


def litdata_sample(source: str, index: int) -> dict:
    """One sample for litdata's optimize, read from a memory map (its workers are spawned processes)."""
    return {"index": index, "image": np.array(np.load(source, mmap_mode="r")[index])}


def bench_litdata(root: Path, pixels: np.ndarray) -> dict:
    from litdata import StreamingDataset, optimize

    root.mkdir(parents=True)
    np.save(root.parent / "litdata-source.npy", pixels)
    sample = functools.partial(litdata_sample, str(root.parent / "litdata-source.npy"))
    write = timed(lambda: optimize(sample, list(range(N)), str(root), chunk_bytes=SHARD_BYTES, num_workers=1))
    dataset = StreamingDataset(str(root))
    sequential = timed(lambda: [dataset[i] for i in range(N)])
    random = timed(lambda: [[dataset[int(i)] for i in b] for b in random_batches()])
    return {"write_s": write, "sequential_img_s": N / sequential, "random_img_s": BATCHES * BATCH / random}


def bench_mds(root: Path, pixels: np.ndarray) -> dict:
    from streaming import MDSWriter, StreamingDataset

    def write_all() -> None:
        columns = {"index": "int", "image": f"ndarray:uint8:{SIDE},{SIDE},3"}
        with MDSWriter(out=str(root), columns=columns, size_limit=SHARD_BYTES, hashes=["sha1"]) as writer:
            for i in range(N):
                writer.write({"index": i, "image": pixels[i]})

    write = timed(write_all)
    dataset = StreamingDataset(local=str(root), batch_size=BATCH, shuffle=False)
    sequential = timed(lambda: [dataset[i] for i in range(N)])
    random = timed(lambda: [[dataset[int(i)] for i in b] for b in random_batches()])
    return {"write_s": write, "sequential_img_s": N / sequential, "random_img_s": BATCHES * BATCH / random}


def bench_webdataset(root: Path, pixels: np.ndarray) -> dict:
    import webdataset as wds

    root.mkdir(parents=True)

    def write_all() -> None:
        with wds.ShardWriter(str(root / "shard-%06d.tar"), maxsize=SHARD_BYTES) as sink:
            for i in range(N):
                sink.write({"__key__": f"{i:08d}", "image.npy": pixels[i]})

    write = timed(write_all)
    urls = [str(p) for p in sorted(root.glob("*.tar"))]
    sequential = timed(lambda: sum(1 for _ in wds.WebDataset(urls, shardshuffle=False).decode()))
    return {"write_s": write, "sequential_img_s": N / sequential, "random_img_s": None}


def main() -> None:
    out = Path(sys.argv[1])
    shutil.rmtree(out, ignore_errors=True)
    pixels = images()
    results = {}
    for name, bench in [
        ("memmap", bench_memmap),
        ("workbench-npy", bench_workbench_npy),
        ("litdata", bench_litdata),
        ("mds", bench_mds),
        ("webdataset", bench_webdataset),
    ]:
        try:
            results[name] = bench(out / name, pixels)
        except Exception as error:  # a library that fails offline is a result, not a crash of the benchmark
            results[name] = {"error": f"{type(error).__name__}: {error}"[:300]}
        print(name, results[name], flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
