"""Ingest on Ray Data (data.ingest_engine=ray) gives the single-process ingest's manifest, quarantine report and
digest, row for row, on a licensed fixture with bad files and near-duplicates across splits; the engine is no part
of the cache key; a wrong engine or an unreachable Ray address is refused, naming the key and the fix."""

from __future__ import annotations

import json
import time
from pathlib import Path

import licensed_fixtures as fixtures
import numpy as np
import pandas as pd
import pytest
from helpers import free_port
from stage_configs import compose_stage

from core.errors import WorkbenchError
from datamodules.ingest import chunk_size
from datamodules.licensed.datamodule import LicensedDataModule
from datamodules.licensed.tables import AgeManifest
from datamodules.ray_ingest import ray_session
from datamodules.shards import open_sharded, shard

GOOD = 40


def leaky_dataset(root: Path) -> Path:
    """40 good images, lower-quality copies of 10 of them (the same pictures to PDQ), five broken rows, a stray file."""
    rows = [(f"good/{i:02d}.jpg", 8.0 + 1.5 * i) for i in range(GOOD)]
    for i, (path, _) in enumerate(rows):
        fixtures.write_image(root / path, seed=1200 + i)
    for i in range(10):
        fixtures.write_image(root / f"near/{i:02d}.jpg", seed=1200 + i, quality=40)
        rows.append((f"near/{i:02d}.jpg", rows[i][1]))
    (root / "bad").mkdir()
    (root / "bad/garbage.jpg").write_bytes(b"\x00 no image here" * 16)
    fixtures.write_image(root / "bad/tiny.png", seed=1250, size=16)
    (root / "bad/copy.jpg").write_bytes((root / "good/03.jpg").read_bytes())
    rows += [("bad/garbage.jpg", 30.0), ("bad/tiny.png", 30.0), ("bad/copy.jpg", rows[3][1])]
    rows += [("good/05.jpg", 150.0), ("bad/missing.jpg", 30.0)]
    fixtures.write_image(root / "stray/forgotten.jpg", seed=1251)  # on disk, in no row
    pd.DataFrame(rows, columns=["path", "age"]).to_csv(root / "manifest.csv", index=False)
    fixtures.write_card(root / "dataset_card.yaml", ["research"])
    return root


def datamodule(root: Path, cache: Path, **engine) -> LicensedDataModule:
    return LicensedDataModule(
        adapter=AgeManifest(),
        root=str(root),
        name="leaky",
        card=str(root / "dataset_card.yaml"),
        intended_use="research",
        cache_dir=str(cache),
        target="age",
        preview_columns=("split",),
        max_bad_fraction=1.0,
        **engine,
    )


def outputs(dm: LicensedDataModule) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, dict]:
    """Manifest and images sorted by id, the quarantine report sorted by path, the summary (digest included)."""
    cached = dm.load()
    order = np.argsort(cached.manifest["id"].to_numpy(), kind="stable")
    manifest = cached.manifest.iloc[order].reset_index(drop=True)
    report = pd.read_csv(cached.directory / "quarantine.csv").sort_values("path").reset_index(drop=True)
    summary = json.loads((cached.directory / "quarantine_summary.json").read_text())
    return manifest, np.asarray(cached.images)[order], report, summary


def test_an_unknown_engine_is_refused_naming_the_key_and_the_choices(tmp_path):
    with pytest.raises(WorkbenchError, match=r"data\.ingest_engine='spark' .* 'local' .* 'ray'"):
        datamodule(leaky_dataset(tmp_path / "data"), tmp_path / "cache", ingest_engine="spark")


def test_an_unreachable_ray_address_is_refused_in_seconds_naming_the_key(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    began = time.monotonic()
    refused = pytest.raises(WorkbenchError, match=rf"data\.ray_address={address} .*data\.ray_address=null")
    with refused, ray_session(address, workers=2):
        pass
    assert time.monotonic() - began < 30


def test_the_engine_is_no_part_of_the_cache_key(tmp_path):
    """A Ray-engine module finds the cache a local ingest built, so the result is served without ingesting again."""
    root = leaky_dataset(tmp_path / "data")
    local = datamodule(root, tmp_path / "cache").load()
    served = datamodule(root, tmp_path / "cache", ingest_engine="ray", render_workers=2).load()
    assert served.directory == local.directory


def test_small_datasets_are_chunked_so_that_every_worker_gets_work():
    assert chunk_size(55, 2) == 28 and chunk_size(10_000, 2) == 64 and chunk_size(3, 8) == 1


@pytest.mark.slow
@pytest.mark.ci
def test_ray_ingest_on_two_workers_equals_the_single_process_ingest(tmp_path):
    root = leaky_dataset(tmp_path / "data")
    single = outputs(datamodule(root, tmp_path / "single", render_workers=1))
    manifest, _, report, summary = single
    assert {"undecodable", "too_small", "duplicate_sha256", "label_out_of_range", "missing_file"} <= set(
        report["reason"]
    )
    assert (report["reason"] == "near_duplicate_across_splits").any()  # the second pass over the hashes has work
    assert report["kind"].eq("unlisted").sum() == 1 and len(manifest) > GOOD // 2

    runs = {
        "local pool, 2 workers": datamodule(root, tmp_path / "pool", render_workers=2),
        "Ray, 2 workers": datamodule(root, tmp_path / "ray", ingest_engine="ray", render_workers=2),
    }
    for run, dm in runs.items():
        other = outputs(dm)
        pd.testing.assert_frame_equal(other[0], single[0], obj=f"{run}: manifest")
        assert np.array_equal(other[1], single[1]), f"{run}: cached pixels"
        pd.testing.assert_frame_equal(other[2], single[2], obj=f"{run}: quarantine.csv")
        assert other[3] == summary, f"{run}: quarantine_summary.json (digest included)"


@pytest.mark.slow
@pytest.mark.ci
def test_the_shard_stage_writes_a_ray_ingested_dataset_to_a_store(tmp_path):
    """`childsafe shard data=age_manifest data.ingest_engine=ray data.store=...`: Ray ingests, the writer stores."""
    root, store = leaky_dataset(tmp_path / "data"), tmp_path / "store"
    overrides = ["experiment=age_utkface", "data=age_manifest", f"data.root={root}", "data.max_bad_fraction=1.0"]
    overrides += ["data.ingest_engine=ray", "data.render_workers=2", f"data.store={store}"]
    index = shard(compose_stage("shard", tmp_path, tmp_path / "cache", *overrides))
    single = outputs(datamodule(root, tmp_path / "single"))[0]
    stored = open_sharded(str(store), tmp_path / "reader", 1 << 30, "age_manifest").manifest
    assert index["count"] == len(single)
    pd.testing.assert_frame_equal(stored.sort_values("id").reset_index(drop=True), single)
