"""Integrity checks at ingest: every failure becomes a quarantine row with a named reason.

Reasons (the `reason` column of quarantine.csv):
    path_escapes_root, missing_file, hash_list_match, undecodable, truncated, too_small,
    label_missing, label_out_of_range, unparsable_filename, duplicate_sha256,
    near_duplicate_across_splits, and the adapters' own policy filters (no_face, low_face_score, second_face).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from datamodules.licensed.base import BOX_COLUMNS
from datamodules.manifest import SPLITS
from datamodules.screening import MATCH_DISTANCE, HashList, hamming, pdq_hash, to_hex
from datamodules.transforms import CropConvention, crop_and_resize


@dataclass(frozen=True)
class Inspection:
    """What ingest learned from one file; `pixels` is None whenever the file must stay out of the cache."""

    sha256: str | None = None
    pdq: str | None = None
    pdq_quality: int | None = None
    width: int | None = None
    height: int | None = None
    reason: str | None = None
    detail: str | None = None
    pixels: np.ndarray | None = None


def resolve_inside(root: Path, relative: str) -> Path | None:
    """The file's absolute path, or None when the manifest points outside the dataset root (`../`, absolute)."""
    base = root.resolve()
    target = (base / relative).resolve()
    return target if target.is_relative_to(base) else None


def decode(data: bytes) -> tuple[Image.Image | None, str | None, str | None]:
    """Fully decode, telling a cut-off file (`truncated`) from one that is not an image at all (`undecodable`)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB"), None, None
    except UnidentifiedImageError as error:
        return None, "undecodable", str(error)
    except (OSError, SyntaxError, ValueError) as error:
        text = str(error)
        reason = "truncated" if "truncated" in text.lower() or "broken data stream" in text.lower() else "undecodable"
        return None, reason, text


def inspect_file(
    root: Path, relative: str, box: tuple[float, ...], convention: CropConvention, min_size: int, hash_list: HashList
) -> Inspection:
    """Hash, screen, check and (only if clean) crop one image. Screening comes first and wins over any other reason."""
    path = resolve_inside(root, relative)
    if path is None:
        return Inspection(reason="path_escapes_root", detail=f"'{relative}' resolves outside {root}")
    if not path.is_file():
        return Inspection(reason="missing_file", detail=f"{path} does not exist")
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    image, reason, detail = decode(data)
    if image is None:
        return Inspection(sha256=sha256, reason=reason, detail=detail)
    rgb = np.asarray(image)
    packed, quality = pdq_hash(rgb)
    found = Inspection(sha256=sha256, pdq=to_hex(packed), pdq_quality=quality, width=image.width, height=image.height)
    match = hash_list.match(packed)
    if match is not None:
        return _with(found, "hash_list_match", f"PDQ {found.pdq} within {match[1]} bits of {match[0]}")
    if min(image.width, image.height) < min_size:
        return _with(found, "too_small", f"{image.width}x{image.height} is below data.min_image_size={min_size}")
    return Inspection(**{**found.__dict__, "pixels": crop_and_resize(image, box, convention)})


def _with(found: Inspection, reason: str, detail: str) -> Inspection:
    return Inspection(**{**found.__dict__, "reason": reason, "detail": detail})


def inspect_chunk(
    root: Path, rows: pd.DataFrame, convention: CropConvention, min_size: int, hash_list: HashList
) -> list[Inspection]:
    """A worker's share of the files (run in a process pool)."""
    boxes = rows[list(BOX_COLUMNS)].to_numpy(dtype=float)
    return [
        inspect_file(root, path, tuple(box), convention, min_size, hash_list)
        for path, box in zip(rows["path"], boxes, strict=True)
    ]


def label_problems(
    manifest: pd.DataFrame, task: str, age_range: tuple[float, float], classes: list[str]
) -> tuple[pd.Series, pd.Series]:
    """`label_missing` / `label_out_of_range` per row (None when the label is fine), and the value that failed."""
    if task == "age":
        column, value = "age", pd.to_numeric(manifest["age"], errors="coerce")
        out, allowed = ~value.between(*age_range), f"[{age_range[0]}, {age_range[1]}]"
    else:
        column = "label_name"
        value = manifest[column].where(manifest[column].notna() & (manifest[column].astype(str).str.strip() != ""))
        out, allowed = ~value.isin(classes), str(list(classes))
    reason = np.where(value.isna(), "label_missing", np.where(out, "label_out_of_range", None))
    detail = [None if r is None else f"{column}={v!r}, allowed {allowed}" for r, v in zip(reason, value, strict=True)]
    return pd.Series(reason, manifest.index, dtype=object), pd.Series(detail, manifest.index, dtype=object)


def exact_duplicates(sha256: pd.Series) -> pd.Series:
    """True for every copy of a file after its first (rows are in path order, so the choice is stable)."""
    return sha256.notna() & sha256.duplicated(keep="first")


def near_duplicates_across_splits(pdq: pd.Series, split: pd.Series, max_distance: int = MATCH_DISTANCE) -> pd.Series:
    """Rows whose PDQ is within `max_distance` of an image in an earlier split (train < val < calib < test).

    The later-split copy is the leak (an evaluation image the model effectively trained on), so it is
    the one quarantined. Cost is quadratic in images, computed in chunks.
    """
    packed = np.stack([np.frombuffer(bytes.fromhex(h), np.uint8) for h in pdq]) if len(pdq) else np.empty((0, 32))
    order = split.map({name: k for k, name in enumerate(SPLITS)}).to_numpy()
    leaked = np.zeros(len(pdq), dtype=bool)
    for rank in range(1, len(SPLITS)):
        queries, earlier = np.flatnonzero(order == rank), np.flatnonzero(order < rank)
        if len(queries) and len(earlier):
            leaked[queries] = hamming(packed[queries], packed[earlier]).min(axis=1) <= max_distance
    return pd.Series(leaked, index=pdq.index)
