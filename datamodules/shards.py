"""The sharded form of a cache, for data beyond one machine: uint8 crops in shards, read through a bounded cache.

A sharded cache is what `images.npy` and the folder's small files (`manifest.parquet`, the quarantine
report) become in a store (datamodules/object_store.py, a folder or `s3://bucket/prefix`):

- `shard-00000.npy`, ...: consecutive rows of `images.npy`, each a plain `.npy` array of about
  `shard_bytes` (256 MiB by default), memory-mapped once in the local cache;
- the small files under their own names, `manifest.parquet` among them;
- `index.json`, written last: the cache folder's name, the manifest digest, the images' shape and dtype,
  and for every shard and file its name, size and sha256 (and, for shards, the rows it holds).

The format is hand-written rather than litdata's or MDS's (docs/data-formats.md has the measurement):
their readers bring their own shuffle, rank split and resume state, and the workbench's `ResumableShuffle`
already gives those; what it needs is an array it can fancy-index by row, which a `.npy` shard is.

`ShardedImages` is that array: `images[positions]` gathers a batch from the shards that hold it, so
`CachedImageDataset`, calibrate, evaluate and export read a sharded cache as they read `images.npy`.
"""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import WorkbenchError
from datamodules.cache import CachedDataset
from datamodules.manifest import manifest_digest
from datamodules.object_store import LocalCache, Store, fetch_checked, open_store, sha256_of

INDEX = "index.json"
FORMAT = "childsafe-shards"
FORMAT_VERSION = 1
IMAGES = "images.npy"  # the one file of a cache folder that is sharded rather than copied
SHARD_BYTES = 256 * 2**20
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """One object the index lists; for a shard, also the rows [start, stop) of the cache it holds."""

    name: str
    bytes: int
    sha256: str
    start: int = 0
    stop: int = 0


def write_shards(directory: Path, store: Store, shard_bytes: int = SHARD_BYTES) -> dict[str, Any]:
    """Write the cache folder `directory` into `store` as shards, its small files, and last the index.

    A store that already has an index is refused: its shards are what that index vouches for, and readers may be
    using them. Each object appears whole or not at all, and the index only after all of them, so an interrupted
    write leaves no index and nothing that any reader will use.
    """
    if INDEX in store.sizes():
        raise WorkbenchError(
            f"{store.url}/{INDEX} already exists: shards are never rewritten in place, since readers trust the index "
            "they read. Write to a new prefix (data.store=...), or delete that prefix first."
        )
    images = np.load(directory / IMAGES, mmap_mode="r")
    rows_per_shard = max(1, shard_bytes // max(1, images[0].nbytes))
    shards, files = [], []
    with tempfile.TemporaryDirectory(prefix="shards-") as staging:
        for number, start in enumerate(range(0, len(images), rows_per_shard)):
            stop = min(start + rows_per_shard, len(images))
            shard = Path(staging) / f"shard-{number:05d}.npy"
            np.save(shard, images[start:stop])
            shards.append(_put(store, shard, start, stop))
            shard.unlink()
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p.name != IMAGES):
        files.append(_put(store, path))
    manifest = pd.read_parquet(directory / "manifest.parquet")
    index = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": directory.name,
        "digest": manifest_digest(manifest),
        "count": len(images),
        "shape": list(images.shape[1:]),
        "dtype": str(images.dtype),
        "shards": [vars(e) for e in shards],
        "files": [{k: v for k, v in vars(e).items() if k in ("name", "bytes", "sha256")} for e in files],
    }
    with tempfile.TemporaryDirectory(prefix="shards-") as staging:
        path = Path(staging) / INDEX
        path.write_text(json.dumps(index, indent=1))
        store.put(path, INDEX)
    return index


def _put(store: Store, path: Path, start: int = 0, stop: int = 0) -> Entry:
    entry = Entry(path.name, path.stat().st_size, sha256_of(path), start, stop)
    store.put(path, path.name)
    return entry


@dataclass(frozen=True)
class ShardIndex:
    """A store's `index.json`, checked against what the store holds before anything is read."""

    url: str
    sha256: str  # of index.json itself: names the local copy, so a prefix written anew is never mixed with the old
    name: str
    count: int
    shape: tuple[int, ...]
    dtype: np.dtype
    shards: tuple[Entry, ...]
    files: tuple[Entry, ...]

    @classmethod
    def read(cls, store: Store) -> ShardIndex:
        listed = store.sizes()
        if INDEX not in listed:
            raise WorkbenchError(
                f"No shard index at {store.url}/{INDEX}: the prefix is empty, misspelt, or its shards were never "
                "finished (the index is written last). Write them with `childsafe shard experiment=<name> "
                f"data.store={store.url}`, or fix data.store."
            )
        with tempfile.TemporaryDirectory(prefix="shards-") as staging:
            store.get(INDEX, Path(staging) / INDEX)
            raw = json.loads((Path(staging) / INDEX).read_text())
            digest = sha256_of(Path(staging) / INDEX)
        if raw.get("format") != FORMAT or raw.get("version") != FORMAT_VERSION:
            raise WorkbenchError(
                f"{store.url}/{INDEX} is not a {FORMAT} v{FORMAT_VERSION} index (format={raw.get('format')!r}, "
                f"version={raw.get('version')!r}): write the shards again with this workbench."
            )
        index = cls(
            store.url,
            digest,
            raw["name"],
            raw["count"],
            tuple(raw["shape"]),
            np.dtype(raw["dtype"]),
            tuple(Entry(**e) for e in raw["shards"]),
            tuple(Entry(**e) for e in raw["files"]),
        )
        index.check_against(listed)
        return index

    def check_against(self, listed: dict[str, int]) -> None:
        """Every object the index names is in the store with the size it gives, and the shards tile the rows."""
        for entry in (*self.shards, *self.files):
            if entry.name not in listed:
                raise WorkbenchError(
                    f"The shard index {self.url}/{INDEX} does not match the shards: it lists {entry.name}, which the "
                    "store does not hold. Write the shards again to a fresh prefix (childsafe shard ...)."
                )
            if listed[entry.name] != entry.bytes:
                raise WorkbenchError(
                    f"The shard index {self.url}/{INDEX} does not match the shards: {self.url}/{entry.name} is "
                    f"{listed[entry.name]:,} bytes, the index says {entry.bytes:,} (truncated or replaced). Write "
                    "the shards again to a fresh prefix (childsafe shard ...)."
                )
        bounds = [(0, 0)] + [(e.start, e.stop) for e in self.shards]
        if any(prev[1] != cur[0] for prev, cur in itertools.pairwise(bounds)) or bounds[-1][1] != self.count:
            raise WorkbenchError(
                f"The shard index {self.url}/{INDEX} is inconsistent: its shards do not cover rows 0 to "
                f"{self.count} in order. Write the shards again to a fresh prefix."
            )


class ShardedImages:
    """The images of a sharded cache as a read-only (N, H, W, 3) uint8 array indexed by row.

    Indexing gathers rows shard by shard through the local cache; each shard is memory-mapped only while its
    rows are copied out, so the cache's bound is what the disk holds.
    """

    def __init__(self, index: ShardIndex, cache: LocalCache):
        self.index, self.cache = index, cache
        self.shape = (index.count, *index.shape)
        self.dtype = index.dtype
        self.ndim = len(self.shape)
        self._stops = np.array([e.stop for e in index.shards])

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[np.arange(len(self))].astype(dtype or self.dtype, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        rows = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows {rows.min()}..{rows.max()} outside the {len(self)} of {self.index.url}")
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        shard_of = np.searchsorted(self._stops, rows, side="right")
        for number in np.unique(shard_of):
            entry, wanted = self.index.shards[number], shard_of == number
            array = self.cache.open(entry.name, entry.bytes, entry.sha256, lambda p: np.load(p, mmap_mode="r"))
            out[wanted] = array[rows[wanted] - entry.start]
            del array  # unmapped now, so an evicted shard's space is freed
        return out


def open_sharded(url: str, cache_root: Path, cache_bytes: int, expected_name: str) -> CachedDataset:
    """The cache at `data.store` as a `CachedDataset`: small files fetched once, shards on demand.

    `expected_name` is the cache folder name this config would build (or its `<dataset>-` prefix when the name
    cannot be known without the raw data): a store written for other data is refused before training on it.
    """
    store = open_store(url)
    index = ShardIndex.read(store)
    if not index.name.startswith(expected_name):
        raise WorkbenchError(
            f"data.store={url} holds the shards of {index.name!r}, but this config's data is {expected_name!r}: "
            "point data.store at the shards of this data, or write them (childsafe shard ... data.store=<new prefix>)."
        )
    local = cache_root / f"{index.name}-{index.sha256[:12]}"
    local.mkdir(parents=True, exist_ok=True)
    for entry in index.files:
        if not (local / entry.name).is_file():
            fetch_checked(store, entry.name, entry.bytes, entry.sha256, local / entry.name)
    total = sum(e.bytes for e in index.shards)
    if cache_bytes < total:
        log.warning(
            "data.store_cache_bytes=%d holds less than the %d bytes of shards at %s: the training draw is a global "
            "shuffle, so shards will be fetched again within every epoch, about 10x slower than training on this "
            "machine (docs/data-formats.md). Raise data.store_cache_bytes to at least %d if the disk allows.",
            cache_bytes, total, url, total,
        )  # fmt: skip
    manifest = pd.read_parquet(local / "manifest.parquet")
    images = ShardedImages(index, LocalCache(store, local / "shards", cache_bytes))
    return CachedDataset(local, images, manifest, manifest_digest(manifest))


def shard(cfg) -> dict[str, Any]:
    """`childsafe shard`: build (or reuse) the configured cache locally, then write it to `data.store` as shards."""
    from hydra.utils import instantiate
    from rich.console import Console

    if not cfg.data.get("store"):
        raise WorkbenchError(
            "childsafe shard needs data.store: a folder or s3://bucket/prefix to write the shards to, e.g. "
            "data.store=s3://datasets/age_synthetic-v1 (endpoint and credentials from AWS_* or AWS_PROFILE)."
        )
    datamodule = instantiate(cfg.data, store=None)  # the local cache is the source
    cached = datamodule.load()
    index = write_shards(cached.directory, open_store(cfg.data.store), int(cfg.shard_bytes))
    Console().print(
        f"Wrote {len(index['shards'])} shard(s) of {index['name']} ({index['count']} images) and the index to "
        f"{cfg.data.store}"
    )
    return index
