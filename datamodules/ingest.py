"""Ingest a licensed dataset: adapter rows -> checked, screened, split manifest + uint8 cache + quarantine report.

The cache folder (`<name>-<key>`, keyed by the adapter's rows, the files' sizes and times, the
crop and resize, the checks, the hash lists and INGEST_FORMAT_VERSION) holds `images.npy`,
`manifest.parquet`, `quarantine.csv` and `quarantine_summary.json`. It is built in a staging
folder and renamed into place. A refused ingest (hash-list match, too many bad files) leaves only
its report, under `refused/`.

Pixels: decoded by `datamodules.decoding` (upright, opaque 8-bit RGB), cut by the shared
`childsafe_runtime.crop.crop_face` when the row has a box, then resized by `models.resize.resize_uint8`,
the torch resize the exported graph is traced from (the export parity gate checks onnxruntime's
Resize against it at six frame sizes). Without a box the whole image is resized (to a square, whatever its
aspect ratio; `square` applies to boxes only).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from childsafe_runtime.crop import CropConvention
from rich.progress import Progress

from core.errors import WorkbenchError
from datamodules.cache import CachedDataset, staged
from datamodules.cards import DatasetCard
from datamodules.integrity import (
    Cropping,
    Inspection,
    identical_images,
    inspect_chunk,
    label_problems,
    near_duplicates_across_splits,
    resolve_inside,
    start_worker,
)
from datamodules.licensed.base import FILTER_REASONS, candidates, image_files
from datamodules.manifest import manifest_digest
from datamodules.pool import worker_pool
from datamodules.screening import MATCH_DISTANCE, HashList
from datamodules.splits import assign_splits, label_strata, reuse_persisted

# 2: the shared crop (floor(v + 0.5) rounding) and antialiased resize, EXIF orientation, alpha on black,
# unlisted files; caches built by version 1 are rebuilt.
INGEST_FORMAT_VERSION = 2
CHUNK = 64
REPORT_COLUMNS = ["id", "path", "reason", "kind", "detail", "label_raw", "source", "sha256", "pdq", "normalised"]
REPORT_ONLY = ["reason", "detail", "label_raw", "source"]  # quarantine-report columns left out of the manifest
UNLISTED = "unlisted_file"


class IngestRefused(WorkbenchError):
    """The data may not be trained on; `report_dir` holds the quarantine report that says why."""

    def __init__(self, message: str, report_dir: Path):
        super().__init__(message)
        self.report_dir = report_dir


@dataclass(frozen=True)
class IngestSettings:
    task: str
    classes: list[str] = field(default_factory=list)
    age_range: tuple[float, float] = (0.0, 120.0)
    min_image_size: int = 32
    max_bad_fraction: float = 0.01
    hash_lists: list[str] = field(default_factory=list)
    near_duplicate_distance: int = MATCH_DISTANCE
    split_fractions: dict[str, float] = field(default_factory=dict)
    split_seed: int = 0
    holdout_subject: str | None = None
    crop: CropConvention = field(default_factory=CropConvention)
    image_size: int = 64
    max_images: int | None = None


def ingest_key(rows: pd.DataFrame, root: Path, settings: IngestSettings, licence: str) -> str:
    """Changes whenever a file, a label, a setting or a hash list changes, so a stale cache is never served."""
    digest = hashlib.sha256(rows.to_csv(index=False).encode())
    for relative in rows["path"]:
        path = root / relative
        stat = path.stat() if path.is_file() else None
        digest.update(f"{relative}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1}".encode())
    for hash_file in settings.hash_lists:
        digest.update(Path(hash_file).read_bytes() if Path(hash_file).is_file() else b"missing")
    payload = {"settings": asdict(settings), "licence": licence, "format": INGEST_FORMAT_VERSION}
    digest.update(json.dumps(payload, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


ENGINES = ("local", "ray")


def require_engine(engine: str) -> None:
    """Refuse an engine name before any file is read, saying which ones exist."""
    if engine not in ENGINES:
        raise WorkbenchError(
            f"data.ingest_engine={engine!r} is not an ingest engine. Use 'local' (a process pool of "
            "data.render_workers on this machine) or 'ray' (Ray Data: a local Ray, or the cluster at "
            "data.ray_address); configs/datasets/licensed_common.yaml lists both."
        )


@dataclass(frozen=True)
class IngestEngine:
    """Where the per-file inspection runs. The result does not depend on it, so neither does the cache key."""

    name: str = "local"
    workers: int = 1
    ray_address: str | None = None

    def __post_init__(self) -> None:
        require_engine(self.name)


def chunk_size(rows: int, workers: int) -> int:
    """CHUNK rows per task, fewer when that would leave a worker idle on a small dataset."""
    return max(1, min(CHUNK, -(-rows // max(1, workers))))


def _pool_inspections(
    root: Path, rows: pd.DataFrame, cropping: Cropping, min_size: int, hash_list: HashList, chunk: int, workers: int
) -> Iterator[tuple[np.ndarray, list[Inspection]]]:
    """(row positions, their inspections) per chunk from a local process pool."""
    with worker_pool(workers, initializer=start_worker) as pool:
        starts = range(0, len(rows), chunk)
        futures = [
            pool.submit(inspect_chunk, root, rows.iloc[s : s + chunk], cropping, min_size, hash_list) for s in starts
        ]
        for start, future in zip(starts, futures, strict=True):
            inspections = future.result()
            yield np.arange(start, start + len(inspections)), inspections


def _inspect_all(
    root: Path, rows: pd.DataFrame, settings: IngestSettings, name: str, engine: IngestEngine, pixels: np.ndarray
) -> pd.DataFrame:
    """Inspect every file on the engine with a progress bar; clean pixels go straight into `pixels`.

    Each inspection is put back at its row's position, so the frame (and all that is built from it)
    is the same whichever engine ran and in whatever order its chunks finished.
    """
    cropping, hash_list = Cropping(settings.crop, settings.image_size), HashList.load(settings.hash_lists)
    work = (root, rows, cropping, settings.min_image_size, hash_list, chunk_size(len(rows), engine.workers))
    if engine.name == "ray":
        from datamodules.ray_ingest import ray_inspections  # imports ray: only when it is the engine

        chunks = ray_inspections(*work, engine.workers, engine.ray_address)
    else:
        chunks = _pool_inspections(*work, engine.workers)
    found: list[dict | None] = [None] * len(rows)
    with Progress() as progress:
        task = progress.add_task(f"Ingesting {name} (decode, hash, screen; {engine.name})", total=len(rows))
        for positions, inspections in chunks:
            for position, inspection in zip(positions, inspections, strict=True):
                if inspection.pixels is not None:
                    pixels[position] = inspection.pixels
                found[position] = {k: v for k, v in vars(inspection).items() if k != "pixels"}
            progress.advance(task, len(positions))
    return pd.DataFrame(found)


def with_unlisted(rows: pd.DataFrame, root: Path, adapter, card_path: str) -> pd.DataFrame:
    """The adapter's rows plus an `unlisted_file` row for every file on disk that none of them names.

    Such a file is not trained on, but it is decoded and hash-screened like any other (a hash-list
    match still refuses the run) and reported, so nothing in the dataset folder goes unseen. The
    adapter's own label files and the dataset card are not images and are left out.
    """
    listed = {resolve_inside(root, p) for p in rows["path"]}
    skip = {(root / name).resolve() for name in adapter.label_files()} | {Path(card_path).resolve()}
    extra = [p.relative_to(root).as_posix() for p in image_files(root) if p.resolve() not in listed | skip]
    if not extra:
        return rows
    detail = "no label table or file name lists this file: it was screened and is reported, but not trained on"
    unlisted = candidates([{"id": p, "path": p, "reason": UNLISTED, "detail": detail} for p in extra])
    return pd.concat([rows, unlisted], ignore_index=True).sort_values("path", kind="stable").reset_index(drop=True)


def subsample(rows: pd.DataFrame, limit: int | None, task: str, seed: int) -> pd.DataFrame:
    """At most `limit` rows (debug=smoke), the same share of every label stratum and each stratum at least once.

    Strata are the classes (content) or age bands (age); rows without a label form one more. Taking
    the first files instead could leave whole classes out (an ImageFolder's folders come in order).
    """
    if limit is None or len(rows) <= limit:
        return rows
    stratum = label_strata(rows["label_name" if task == "content" else "age"], task)
    order = np.random.default_rng([seed, 13]).permutation(len(rows))
    shuffled = pd.Series(stratum[order])
    share = shuffled.groupby(shuffled).cumcount() / shuffled.map(shuffled.value_counts())
    chosen = order[np.argsort(share.to_numpy(), kind="stable")[:limit]]
    return rows.iloc[np.sort(chosen)].reset_index(drop=True)


def _merge_reasons(rows: pd.DataFrame, found: pd.DataFrame, settings: IngestSettings) -> pd.DataFrame:
    """Every row's first failing reason: adapter's, then the file's, then the label's, then identical copies.

    A hash-list match outranks every other reason: it must be reported as such whatever else is wrong.
    """
    rows = rows.assign(**{c: found[c] for c in ("sha256", "pdq", "pdq_quality", "width", "height", "normalised")})
    label_reason, label_detail = label_problems(rows, settings.task, settings.age_range, settings.classes)
    screened = found["reason"] == "hash_list_match"
    rows["reason"] = found["reason"].where(screened, rows["reason"].fillna(found["reason"]).fillna(label_reason))
    rows["detail"] = found["detail"].where(screened, rows["detail"].fillna(found["detail"]).fillna(label_detail))
    clean = rows["reason"].isna()
    copy_reason, copy_detail = identical_images(rows[clean], "label_name" if settings.task == "content" else "age")
    rows.loc[clean, "reason"], rows.loc[clean, "detail"] = copy_reason, copy_detail
    return rows


def _require_every_class(kept: pd.DataFrame, rows: pd.DataFrame, classes: list[str]) -> None:
    absent = [c for c in classes if c not in set(kept["label_name"])]
    if absent:
        raise WorkbenchError(
            f"No usable image of class {', '.join(map(repr, absent))} is left after ingest ({len(kept)} of "
            f"{len(rows)} files kept): a model cannot learn a class it never sees. Add images of that class, or "
            "check data.adapter.folder_classes or the table's label column."
        )


def _check(
    rows: pd.DataFrame, found: pd.DataFrame, settings: IngestSettings, splits_file: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Give every row its first failing reason, split the clean ones, then catch leakage across splits."""
    rows = _merge_reasons(rows, found, settings)
    kept = rows[rows["reason"].isna()].copy()
    if settings.task == "content":
        _require_every_class(kept, rows, settings.classes)
        kept["label"] = kept["label_name"].map({c: k for k, c in enumerate(settings.classes)}).astype("int64")
    split = assign_splits(kept, settings.task, settings.split_fractions, settings.split_seed, settings.holdout_subject)
    kept["split"] = reuse_persisted(kept, split, splits_file)
    near = near_duplicates_across_splits(kept["pdq"], kept["split"], settings.near_duplicate_distance)
    for index, earlier, distance in near.loc[near["leak"], ["earlier", "distance"]].itertuples():
        rows.loc[index, ["reason", "detail"]] = [
            "near_duplicate_across_splits",
            f"PDQ within {distance} bits of '{kept['path'].iloc[earlier]}' ({kept['split'].iloc[earlier]}), an "
            f"earlier split than this copy's {kept.loc[index, 'split']}: the later copy is the leak",
        ]
    return kept[~near["leak"]], rows


def _kind(reason: pd.Series) -> np.ndarray:
    """`filtered` (the dataset's own policy), `unlisted` (not part of the labelled data) or `quarantined`."""
    return np.where(reason.isin(FILTER_REASONS), "filtered", np.where(reason == UNLISTED, "unlisted", "quarantined"))


def _report(rows: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The quarantine rows and summary; only `quarantined` rows count against data.max_bad_fraction."""
    bad = rows[rows["reason"].notna()].assign(kind=lambda f: _kind(f["reason"]))
    quarantined, unlisted = int((bad["kind"] == "quarantined").sum()), int((bad["kind"] == "unlisted").sum())
    summary = {
        "files": len(rows) - unlisted,  # the files the dataset's tables or names list
        "accepted": int(rows["reason"].isna().sum()),
        "quarantined": quarantined,
        "filtered": int((bad["kind"] == "filtered").sum()),
        "unlisted": unlisted,
        "quarantined_fraction": quarantined / max(1, len(rows) - unlisted),
        "hash_list_matches": int((bad["reason"] == "hash_list_match").sum()),
        "by_reason": {str(k): int(v) for k, v in bad["reason"].value_counts().sort_index().items()},
    }
    return bad[REPORT_COLUMNS], summary


def write_report(folder: Path, report: pd.DataFrame, summary: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    report.to_csv(folder / "quarantine.csv", index=False)
    (folder / "quarantine_summary.json").write_text(json.dumps(summary, indent=2))
    return folder / "quarantine.csv"


def _refuse_if_unsafe(summary: dict, settings: IngestSettings, refused: Path, report: pd.DataFrame) -> None:
    if summary["hash_list_matches"]:
        path = write_report(refused, report, summary)
        raise IngestRefused(
            f"{summary['hash_list_matches']} image(s) match the configured hash lists (PDQ distance <= "
            f"{MATCH_DISTANCE}). They were not cached and this run will not proceed. Their paths and hashes are in "
            f"{path} (reason hash_list_match): remove them from the dataset and report them as your policy requires.",
            refused,
        )
    if summary["quarantined_fraction"] > settings.max_bad_fraction:
        path = write_report(refused, report, summary)
        raise IngestRefused(
            f"{summary['quarantined']} of {summary['files']} files ({summary['quarantined_fraction']:.1%}) failed "
            f"integrity checks, more than data.max_bad_fraction={settings.max_bad_fraction}. Reasons: "
            f"{summary['by_reason']}. See {path}; fix the files or, if the losses are acceptable, raise "
            "data.max_bad_fraction.",
            refused,
        )


def ingest(
    adapter,
    root: Path,
    name: str,
    card: DatasetCard,
    settings: IngestSettings,
    cache_root: Path,
    engine: IngestEngine | None = None,
) -> CachedDataset:
    """Return the cached dataset, ingesting it first (on `engine`, one local process by default) when this
    exact data and config were never ingested."""
    if not root.is_dir():
        raise WorkbenchError(f"data.root={root} is not a folder. Point it at the top folder of the {name} dataset.")
    rows = adapter.read(root)
    if not rows.empty:
        rows = with_unlisted(rows, root, adapter, card.path)
    rows = subsample(rows, settings.max_images, settings.task, settings.split_seed)
    if rows.empty:
        raise WorkbenchError(f"No images found under data.root={root} for the {name} adapter.")
    key = ingest_key(rows, root, settings, card.licence)
    directory = Path(cache_root) / f"{name}-{key}"
    if (directory / "manifest.parquet").exists():
        return CachedDataset.load(directory)

    with staged(directory) as staging:
        size = settings.image_size
        pixels = np.lib.format.open_memmap(
            staging / "all.npy", mode="w+", dtype=np.uint8, shape=(len(rows), size, size, 3)
        )
        found = _inspect_all(root, rows, settings, name, engine or IngestEngine(), pixels)
        kept, rows = _check(rows, found, settings, Path(cache_root) / "splits" / f"{name}.parquet")
        report, summary = _report(rows)
        _refuse_if_unsafe(summary, settings, Path(cache_root) / "refused" / f"{name}-{key}", report)
        manifest = kept.assign(subject_id=kept["subject_id"].fillna(kept["id"]), licence=card.licence)
        manifest = manifest.drop(columns=REPORT_ONLY).reset_index(drop=True)
        images = np.lib.format.open_memmap(
            staging / "images.npy", mode="w+", dtype=np.uint8, shape=(len(kept), size, size, 3)
        )
        images[:] = pixels[kept.index.to_numpy()]
        images.flush()
        del images, pixels
        (staging / "all.npy").unlink()
        manifest.to_parquet(staging / "manifest.parquet", index=False)
        write_report(staging, report, summary | {"digest": manifest_digest(manifest)})
    return CachedDataset.load(directory)
