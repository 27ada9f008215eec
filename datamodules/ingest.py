"""Ingest a licensed dataset: adapter rows -> checked, screened, split manifest + uint8 cache + quarantine report.

The cache folder (`<name>-<key>`, keyed by the adapter's rows, the files' sizes and times, the
transform, the checks and the hash lists) holds `images.npy`, `manifest.parquet`, `quarantine.csv`
and `quarantine_summary.json`. It is built in a staging folder and renamed into place. A refused
ingest (hash-list match, too many bad files) leaves only its report, under `refused/`.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import Progress

from datamodules.cache import CachedDataset, staged
from datamodules.cards import DatasetCard
from datamodules.integrity import (
    exact_duplicates,
    inspect_chunk,
    label_problems,
    near_duplicates_across_splits,
)
from datamodules.licensed.base import FILTER_REASONS
from datamodules.manifest import manifest_digest
from datamodules.screening import MATCH_DISTANCE, HashList
from datamodules.splits import assign_splits, reuse_persisted
from datamodules.transforms import CropConvention
from tracking.errors import WorkbenchError

INGEST_FORMAT_VERSION = 1
CHUNK = 64
REPORT_COLUMNS = ["id", "path", "reason", "kind", "detail", "sha256", "pdq"]


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


def _inspect_all(
    root: Path, rows: pd.DataFrame, settings: IngestSettings, name: str, workers: int, pixels: np.ndarray
) -> pd.DataFrame:
    """Inspect every file in a process pool with a progress bar; clean pixels go straight into `pixels`."""
    hash_list = HashList.load(settings.hash_lists)
    starts = range(0, len(rows), CHUNK)
    found: list[dict] = []
    with Progress() as progress, ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        task = progress.add_task(f"Ingesting {name} (decode, hash, screen)", total=len(rows))
        futures = [
            pool.submit(
                inspect_chunk, root, rows.iloc[s : s + CHUNK], settings.crop, settings.min_image_size, hash_list
            )
            for s in starts
        ]
        for start, future in zip(starts, futures, strict=True):
            for offset, inspection in enumerate(future.result()):
                if inspection.pixels is not None:
                    pixels[start + offset] = inspection.pixels
                found.append({k: v for k, v in vars(inspection).items() if k != "pixels"})
            progress.advance(task, CHUNK)
    return pd.DataFrame(found)


def _check(
    rows: pd.DataFrame, found: pd.DataFrame, settings: IngestSettings, splits_file: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Give every row its first failing reason, split the clean ones, then catch leakage across splits.

    A hash-list match outranks every other reason: it must be reported as such whatever else is wrong.
    """
    rows = rows.assign(**{c: found[c] for c in ("sha256", "pdq", "pdq_quality", "width", "height")})
    label_reason, label_detail = label_problems(rows, settings.task, settings.age_range, settings.classes)
    screened = found["reason"] == "hash_list_match"
    rows["reason"] = found["reason"].where(screened, rows["reason"].fillna(found["reason"]).fillna(label_reason))
    rows["detail"] = found["detail"].where(screened, rows["detail"].fillna(found["detail"]).fillna(label_detail))
    duplicate = rows["reason"].isna() & exact_duplicates(rows["sha256"].where(rows["reason"].isna()))
    rows.loc[duplicate, ["reason", "detail"]] = ["duplicate_sha256", "same bytes as an earlier file (path order)"]

    kept = rows[rows["reason"].isna()].copy()
    if settings.task == "content":
        kept["label"] = kept["label_name"].map({c: k for k, c in enumerate(settings.classes)}).astype("int64")
    split = assign_splits(kept, settings.task, settings.split_fractions, settings.split_seed, settings.holdout_subject)
    kept["split"] = reuse_persisted(kept, split, splits_file)
    leak = near_duplicates_across_splits(kept["pdq"], kept["split"], settings.near_duplicate_distance)
    rows.loc[leak[leak].index, ["reason", "detail"]] = ["near_duplicate_across_splits", "PDQ match in an earlier split"]
    return kept[~leak], rows


def _report(rows: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    bad = rows[rows["reason"].notna()].assign(
        kind=lambda f: np.where(f["reason"].isin(FILTER_REASONS), "filtered", "quarantined")
    )
    quarantined = int((bad["kind"] == "quarantined").sum())
    summary = {
        "files": len(rows),
        "accepted": int(rows["reason"].isna().sum()),
        "quarantined": quarantined,
        "filtered": int((bad["kind"] == "filtered").sum()),
        "quarantined_fraction": quarantined / max(1, len(rows)),
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
    adapter, root: Path, name: str, card: DatasetCard, settings: IngestSettings, cache_root: Path, workers: int = 1
) -> CachedDataset:
    """Return the cached dataset, ingesting it first when this exact data and config were never ingested."""
    if not root.is_dir():
        raise WorkbenchError(f"data.root={root} is not a folder. Point it at the top folder of the {name} dataset.")
    rows = adapter.read(root)
    if settings.max_images is not None:
        rows = rows.head(settings.max_images).reset_index(drop=True)
    if rows.empty:
        raise WorkbenchError(f"No images found under data.root={root} for the {name} adapter.")
    key = ingest_key(rows, root, settings, card.licence)
    directory = Path(cache_root) / f"{name}-{key}"
    if (directory / "manifest.parquet").exists():
        return CachedDataset.load(directory)

    with staged(directory) as staging:
        size = settings.crop.size
        pixels = np.lib.format.open_memmap(
            staging / "all.npy", mode="w+", dtype=np.uint8, shape=(len(rows), size, size, 3)
        )
        found = _inspect_all(root, rows, settings, name, workers, pixels)
        kept, rows = _check(rows, found, settings, Path(cache_root) / "splits" / f"{name}.parquet")
        report, summary = _report(rows)
        _refuse_if_unsafe(summary, settings, Path(cache_root) / "refused" / f"{name}-{key}", report)
        manifest = kept.assign(subject_id=kept["subject_id"].fillna(kept["id"]), licence=card.licence)
        manifest = manifest.drop(columns=["reason", "detail"]).reset_index(drop=True)
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
