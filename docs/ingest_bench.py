"""The measurement behind docs/benchmarks.md's "Distributed ingest": ingest throughput by engine and worker count.

    PYTHONPATH=tests .venv/bin/python docs/ingest_bench.py /tmp/ingest-bench --images 3000

Generates an AgeManifest dataset of `--images` 128x96 frames with face boxes (tests/licensed_fixtures.py:
abstract shapes, never faces), then ingests it from scratch with the local pool and with Ray on 1 and 2 workers,
alternating, each into a fresh cache. A Ray row's start-up (a local Ray of that many CPUs) is timed apart from
its ingest. Every run must give the same manifest digest, or the script stops. Not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import licensed_fixtures as fixtures

from datamodules.licensed.datamodule import LicensedDataModule
from datamodules.licensed.tables import AgeManifest
from datamodules.ray_ingest import ray_session

RUNS = [("local", 1), ("ray", 1), ("local", 2), ("ray", 2)]


def ingest_seconds(root: Path, cache: Path, engine: str, workers: int) -> tuple[float, float, str]:
    """(Ray start-up seconds, ingest seconds, manifest digest) of one ingest from an empty cache."""
    shutil.rmtree(cache, ignore_errors=True)
    began = time.perf_counter()
    with ray_session(None, workers) if engine == "ray" else nullcontext():
        started = time.perf_counter()
        module = LicensedDataModule(
            adapter=AgeManifest(),
            root=str(root),
            name="bench",
            card=str(root / "dataset_card.yaml"),
            intended_use="research",
            cache_dir=str(cache),
            target="age",
            preview_columns=("split",),
            render_workers=workers,
            ingest_engine=engine,
        )
        directory = module.load().directory
        done = time.perf_counter()
    digest = json.loads((directory / "quarantine_summary.json").read_text())["digest"]
    return started - began, done - started, digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--images", type=int, default=3000)
    args = parser.parse_args()
    root = args.folder / "data"
    if not (root / "manifest.csv").is_file():
        fixtures.age_manifest_with_boxes(root, n=args.images)
    rows, digests = [], set()
    for engine, workers in RUNS:
        start_up, seconds, digest = ingest_seconds(root, args.folder / "cache", engine, workers)
        digests.add(digest)
        rows.append((engine, workers, start_up, seconds))
        print(f"{engine} x{workers}: start-up {start_up:.1f} s, ingest {seconds:.1f} s", flush=True)
    assert len(digests) == 1, f"the engines disagree: digests {digests}"
    base = {engine: args.images / seconds for engine, workers, _, seconds in rows if workers == 1}
    print(f"\n{args.images} images, manifest digest {digests.pop()[:16]} in every run\n")
    print("| engine | workers | start-up s | ingest s | images/s | vs 1 worker | with start-up, images/s |")
    print("|---|---|---|---|---|---|---|")
    for engine, workers, start_up, seconds in rows:
        rate = args.images / seconds
        print(
            f"| {engine} | {workers} | {start_up:.1f} | {seconds:.1f} | {rate:.0f} | {rate / base[engine]:.2f}x | "
            f"{args.images / (start_up + seconds):.0f} |"
        )


if __name__ == "__main__":
    main()
