"""The sharded cache in a folder store: the same rows as images.npy, a bounded local cache, and every refusal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from core.errors import WorkbenchError
from datamodules.datamodule import CachedImageDataset
from datamodules.object_store import FolderStore, LocalCache, open_store
from datamodules.shards import INDEX, ShardedImages, ShardIndex, open_sharded, write_shards

ROWS, SIDE = 100, 8
ROW_BYTES = SIDE * SIDE * 3


@pytest.fixture
def cache_folder(tmp_path: Path) -> Path:
    """A cache folder as materialise leaves it: images.npy, manifest.parquet and one more small file."""
    folder = tmp_path / "toy-0123456789abcdef"
    folder.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (ROWS, SIDE, SIDE, 3), dtype=np.uint8)
    np.save(folder / "images.npy", images)
    manifest = pd.DataFrame({"id": [f"i{k}" for k in range(ROWS)], "split": "train", "age": np.arange(ROWS) * 1.0})
    manifest.to_parquet(folder / "manifest.parquet", index=False)
    (folder / "quarantine_summary.json").write_text("{}")
    return folder


def _written(cache_folder: Path, tmp_path: Path, rows_per_shard: int = 30) -> FolderStore:
    store = FolderStore(tmp_path / "store")
    write_shards(cache_folder, store, shard_bytes=rows_per_shard * ROW_BYTES)
    return store


def test_shards_serve_the_same_rows_as_the_memory_mapped_cache(cache_folder, tmp_path):
    store = _written(cache_folder, tmp_path)
    assert sorted(store.sizes()) == [
        INDEX, "manifest.parquet", "quarantine_summary.json", *(f"shard-0000{k}.npy" for k in range(4))
    ]  # fmt: skip
    cached = open_sharded(store.url, tmp_path / "local", 10 * 2**20, "toy-")
    reference = np.load(cache_folder / "images.npy")
    assert cached.images.shape == reference.shape and cached.images.dtype == np.uint8
    rows = np.random.default_rng(1).permutation(ROWS)[:40]  # a shuffled batch straddling every shard
    np.testing.assert_array_equal(cached.images[rows], reference[rows])
    np.testing.assert_array_equal(np.asarray(cached.images), reference)
    np.testing.assert_array_equal(cached.images[5], reference[5])
    pd.testing.assert_frame_equal(cached.manifest, pd.read_parquet(cache_folder / "manifest.parquet"))
    assert (cached.directory / "quarantine_summary.json").read_text() == "{}"  # the small files travel too

    dataset = CachedImageDataset(cached.images, np.arange(ROWS), np.zeros(ROWS, np.float32))
    memmapped = np.load(cache_folder / "images.npy", mmap_mode="r")
    memmapped = CachedImageDataset(memmapped, np.arange(ROWS), dataset.targets)
    keys = rows[:16].tolist()
    assert all((dataset.__getitems__(keys)[k] == memmapped.__getitems__(keys)[k]).all() for k in ("image", "position"))


def test_the_local_cache_stays_within_its_bound_evicting_the_least_recently_used(cache_folder, tmp_path):
    store = _written(cache_folder, tmp_path)
    shard = store.sizes()["shard-00000.npy"]
    cache = LocalCache(store, tmp_path / "local", max_bytes=2 * shard + 10)
    images = ShardedImages(ShardIndex.read(store), cache)
    for rows in ([0], [40], [0], [70], [95]):
        images[rows]
        assert cache.used_bytes() <= cache.max_bytes
    assert sorted(p.name for p in (tmp_path / "local").glob("*.npy")) == ["shard-00002.npy", "shard-00003.npy"]


def test_a_corrupted_shard_is_refused_naming_it(cache_folder, tmp_path):
    store = _written(cache_folder, tmp_path)
    shard = store.root / "shard-00002.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size: only the sha256 can tell
    shard.write_bytes(bytes(data))
    cached = open_sharded(store.url, tmp_path / "local", 10 * 2**20, "toy-")
    np.testing.assert_array_equal(cached.images[[0, 1]], np.load(cache_folder / "images.npy")[[0, 1]])
    with pytest.raises(WorkbenchError, match=r"Refusing shard .*store/shard-00002\.npy: its sha256 does not match"):
        cached.images[[65]]
    assert not list((cached.directory / "shards").glob("*shard-00002*"))  # nothing of it was kept


def test_a_truncated_shard_or_a_mismatched_index_is_refused_before_reading(cache_folder, tmp_path):
    store = _written(cache_folder, tmp_path)
    shard = store.root / "shard-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(WorkbenchError, match=r"does not match the shards: .*shard-00001\.npy is .* bytes, the index"):
        ShardIndex.read(store)
    shard.unlink()
    with pytest.raises(WorkbenchError, match=r"lists shard-00001\.npy, which the store does not hold"):
        ShardIndex.read(store)


def test_a_prefix_without_an_index_or_with_one_already_is_refused(cache_folder, tmp_path):
    with pytest.raises(WorkbenchError, match=r"No shard index at .*nowhere/index\.json.*childsafe shard"):
        ShardIndex.read(FolderStore(tmp_path / "nowhere"))
    store = _written(cache_folder, tmp_path)
    before = {name: (store.root / name).stat().st_mtime_ns for name in store.sizes()}
    with pytest.raises(WorkbenchError, match=r"index\.json already exists: shards are never rewritten"):
        write_shards(cache_folder, store)
    assert {name: (store.root / name).stat().st_mtime_ns for name in store.sizes()} == before


def test_an_interrupted_write_leaves_no_index(cache_folder, tmp_path, monkeypatch):
    store = FolderStore(tmp_path / "store")
    real_put = FolderStore.put

    def fail_on_manifest(self, source, name):
        if name == "manifest.parquet":
            raise OSError("disk went away")
        real_put(self, source, name)

    monkeypatch.setattr(FolderStore, "put", fail_on_manifest)
    with pytest.raises(OSError):
        write_shards(cache_folder, store, shard_bytes=30 * ROW_BYTES)
    assert INDEX not in store.sizes() and not list(store.root.glob(".*partial"))


def test_a_cache_too_small_for_one_shard_or_other_data_is_refused(cache_folder, tmp_path, caplog):
    store = _written(cache_folder, tmp_path)
    cached = open_sharded(store.url, tmp_path / "local", 100, "toy-")
    assert "shards will be fetched again within every epoch" in caplog.text  # a cache below the data is slow
    with pytest.raises(WorkbenchError, match=r"shard-00000\.npy is .* more than .*raise data\.store_cache_bytes"):
        cached.images[[0]]
    with pytest.raises(WorkbenchError, match=r"holds the shards of 'toy-0123456789abcdef', but this config's data is"):
        open_sharded(store.url, tmp_path / "local", 2**20, "age_synthetic-")


def test_a_tampered_index_is_refused(cache_folder, tmp_path):
    store = _written(cache_folder, tmp_path)
    index = json.loads((store.root / INDEX).read_text())
    index["shards"][1]["start"] += 1
    (store.root / INDEX).write_text(json.dumps(index))
    with pytest.raises(WorkbenchError, match="do not cover rows 0 to 100"):
        ShardIndex.read(store)


def test_store_urls():
    assert open_store("s3://bucket/a/b/").url == "s3://bucket/a/b"
    with pytest.raises(WorkbenchError, match="names no bucket"):
        open_store("s3:///x")
    with pytest.raises(WorkbenchError, match="only s3://bucket/prefix or a folder"):
        open_store("gs://bucket/x")


def test_a_full_local_disk_is_refused_naming_the_cache_folder(cache_folder, tmp_path, monkeypatch):
    store = _written(cache_folder, tmp_path)
    cached = open_sharded(store.url, tmp_path / "local", 2**20, "toy-")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    with pytest.raises(WorkbenchError, match=r"local shard cache .*/shards has 1,000 bytes free, too few for"):
        cached.images[[0]]
