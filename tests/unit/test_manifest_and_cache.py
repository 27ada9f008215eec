import dataclasses

import numpy as np
import pandas as pd
import pytest
from childsafe_runtime.crop import CropConvention

import datamodules.cache as cache
import datamodules.ingest as ingest
from core.errors import WorkbenchError
from datamodules.manifest import SPLITS, assign_subject_splits, manifest_digest
from datamodules.splits import assign_splits
from datamodules.synthetic.faces import SyntheticFaces

FRACTIONS = {"train": 0.7, "val": 0.1, "calib": 0.1, "test": 0.1}


def test_splits_are_disjoint_by_subject_and_follow_the_fractions():
    manifest = assign_subject_splits(SyntheticFaces(num_subjects=1000).manifest(), FRACTIONS, seed=0)
    splits_per_subject = manifest.groupby("subject_id")["split"].nunique()
    assert splits_per_subject.max() == 1
    assert set(manifest["split"]) == set(SPLITS)
    shares = manifest.drop_duplicates("subject_id")["split"].value_counts(normalize=True)
    for split, fraction in FRACTIONS.items():
        assert shares[split] == pytest.approx(fraction, abs=0.01)


@pytest.mark.parametrize(
    "split", [assign_subject_splits, lambda manifest, f, seed: assign_splits(manifest, "age", f, seed)]
)
def test_bad_split_fractions_are_named_alike_for_synthetic_and_licensed_splits(split):
    with pytest.raises(WorkbenchError, match=r"data\.split_fractions must name only .* got \{'train': 0.5, 'holdout'"):
        split(SyntheticFaces(num_subjects=10).manifest(), {"train": 0.5, "holdout": 0.5}, 0)


def test_digest_changes_when_a_label_changes():
    manifest = assign_subject_splits(SyntheticFaces(num_subjects=20).manifest(), FRACTIONS, seed=0)
    changed = manifest.copy()
    changed.loc[0, "age"] += 1.0
    assert manifest_digest(manifest) == manifest_digest(manifest.copy())
    assert manifest_digest(manifest) != manifest_digest(changed)


def test_cache_renders_once_and_is_reused(tmp_path, monkeypatch):
    generator = SyntheticFaces(num_subjects=12, images_per_subject=2)
    first = cache.materialise(generator, tmp_path, FRACTIONS, split_seed=0)
    assert first.images.shape == (24, 64, 64, 3)
    assert first.manifest["sha256"].str.len().eq(64).all()
    assert set(first.manifest.columns) >= {"id", "subject_id", "age", "split", "sha256", "licence"}

    def refuse(*args, **kwargs):
        raise AssertionError("the cache should have been reused, not re-rendered")

    monkeypatch.setattr(cache, "_render_chunk", refuse)
    second = cache.materialise(generator, tmp_path, FRACTIONS, split_seed=0)
    assert second.directory == first.directory and second.digest == first.digest
    assert np.array_equal(np.asarray(second.images), np.asarray(first.images))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".staging")] == []


def test_one_worker_renders_in_process_and_a_pool_renders_the_same_bytes(tmp_path, monkeypatch):
    generator = SyntheticFaces(num_subjects=150, images_per_subject=2)  # 300 images: two chunks
    pooled = cache.materialise(generator, tmp_path / "pool", FRACTIONS, split_seed=0, workers=2)

    def no_pool(*args, **kwargs):
        raise AssertionError("one worker renders in this process: no pool to start")

    monkeypatch.setattr(cache, "worker_pool", no_pool)
    alone = cache.materialise(generator, tmp_path / "alone", FRACTIONS, split_seed=0, workers=1)
    assert alone.digest == pooled.digest and np.array_equal(np.asarray(alone.images), np.asarray(pooled.images))


def test_ingest_cache_key_follows_the_crop_and_the_format_version(tmp_path, monkeypatch):
    """A cache built with another crop, resize size or ingest format (1: the old PIL crop) is never served."""
    rows = pd.DataFrame({"path": ["a.jpg"], "age": [30.0]})
    settings = ingest.IngestSettings(task="age")
    key = ingest.ingest_key(rows, tmp_path, settings, "CC0-1.0")
    assert ingest.ingest_key(rows, tmp_path, settings, "CC0-1.0") == key
    assert ingest.ingest_key(rows, tmp_path, dataclasses.replace(settings, image_size=96), "CC0-1.0") != key
    margin = dataclasses.replace(settings, crop=CropConvention(margin=0.3))
    assert ingest.ingest_key(rows, tmp_path, margin, "CC0-1.0") != key
    monkeypatch.setattr(ingest, "INGEST_FORMAT_VERSION", 1)
    assert ingest.ingest_key(rows, tmp_path, settings, "CC0-1.0") != key
