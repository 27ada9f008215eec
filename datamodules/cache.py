"""Render a synthetic dataset once into an on-disk uint8 cache keyed by the generator config.

The cache is one memory-mappable `images.npy` (N, H, W, 3) plus `manifest.parquet`; it is built in
a temporary folder and renamed into place, so an interrupted render never leaves a half cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import Progress

from datamodules.manifest import assign_subject_splits, manifest_digest
from datamodules.pool import worker_pool

CACHE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class CachedDataset:
    directory: Path
    images: np.ndarray  # or datamodules.shards.ShardedImages: indexed by row alike
    manifest: pd.DataFrame
    digest: str

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.parquet"

    @classmethod
    def load(cls, directory: Path) -> CachedDataset:
        manifest = pd.read_parquet(directory / "manifest.parquet")
        return cls(directory, np.load(directory / "images.npy", mmap_mode="r"), manifest, manifest_digest(manifest))


def cache_key(generator, split_fractions: dict[str, float], split_seed: int) -> str:
    payload = {
        "generator": type(generator).__name__,
        "renderer_version": generator.renderer_version,
        "config": dataclasses.asdict(generator),
        "splits": dict(split_fractions),
        "split_seed": split_seed,
        "format": CACHE_FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_directory(generator, cache_root: str | Path, split_fractions: dict[str, float], split_seed: int) -> Path:
    """Where this exact config's render lives; its name is also what a sharded copy of it is known by."""
    return Path(cache_root) / f"{generator.name}-{cache_key(generator, split_fractions, split_seed)}"


def _render_chunk(generator, manifest: pd.DataFrame, indices: list[int]) -> np.ndarray:
    return np.stack([generator.render(manifest.iloc[i], i) for i in indices])


def _rendered(generator, manifest: pd.DataFrame, chunks: list[list[int]], workers: int) -> Iterator[np.ndarray]:
    """Each chunk's images in order: in this process for one worker (a pool's start-up, which imports torch in
    the forkserver, costs more than a small render), else from a pool of `workers`."""
    if workers <= 1:
        yield from (_render_chunk(generator, manifest, chunk) for chunk in chunks)
        return
    with worker_pool(workers) as pool:
        futures = [pool.submit(_render_chunk, generator, manifest, chunk) for chunk in chunks]
        yield from (future.result() for future in futures)


def materialise(
    generator,
    cache_root: str | Path,
    split_fractions: dict[str, float],
    split_seed: int,
    workers: int = 1,
    assign_splits: Callable[[pd.DataFrame, dict[str, float], int], pd.DataFrame] = assign_subject_splits,
) -> CachedDataset:
    """Return the cached dataset, rendering it first if this exact config was never rendered.

    `assign_splits` adds the `split` column: by subject for images, by whole stream for streams.
    """
    directory = cache_directory(generator, cache_root, split_fractions, split_seed)
    if (directory / "manifest.parquet").exists():
        return CachedDataset.load(directory)

    manifest = assign_splits(generator.manifest(), split_fractions, split_seed)
    size = generator.image_size
    with staged(directory) as staging:
        images = np.lib.format.open_memmap(
            staging / "images.npy", mode="w+", dtype=np.uint8, shape=(len(manifest), size, size, 3)
        )
        chunks = [list(range(i, min(i + 256, len(manifest)))) for i in range(0, len(manifest), 256)]
        with Progress() as progress:
            task = progress.add_task(f"Rendering {generator.name}", total=len(manifest))
            for chunk, rendered in zip(chunks, _rendered(generator, manifest, chunks, workers), strict=True):
                images[chunk[0] : chunk[-1] + 1] = rendered
                progress.advance(task, len(chunk))
        images.flush()
        manifest["sha256"] = [hashlib.sha256(image.tobytes()).hexdigest() for image in images]
        manifest["licence"] = generator.licence
        manifest.to_parquet(staging / "manifest.parquet", index=False)
        del images
    return CachedDataset.load(directory)


@contextmanager
def staged(directory: Path) -> Iterator[Path]:
    """A private staging folder renamed to `directory` on success and removed on any failure.

    An interrupted build never leaves a half cache; when a concurrent run built the same key
    first, its cache is kept and ours discarded.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
    try:
        yield staging
        try:
            os.replace(staging, directory)
        except OSError:
            if not (directory / "manifest.parquet").exists():
                raise
            shutil.rmtree(staging)  # a concurrent run built the same key first: use theirs
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
