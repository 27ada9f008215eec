"""Integrity checks at ingest: every failure becomes a quarantine row with a named reason.

Reasons (the `reason` column of quarantine.csv; docs/datasets.md explains each):
    path_escapes_root, missing_file, filename_mismatch, hash_list_match, undecodable, truncated,
    unsupported_mode, too_small, bad_box, label_missing, label_unparsable, label_out_of_range,
    unparsable_filename, label_conflict, duplicate_sha256, near_duplicate_across_splits, unlisted_file,
    and the adapters' own policy filters (no_face, low_face_score, second_face).
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch
from childsafe_runtime.crop import BoxError, CropConvention, crop_face

from datamodules.decoding import DecodeError, decode_image
from datamodules.licensed.base import BOX_COLUMNS
from datamodules.manifest import SPLITS
from datamodules.screening import MATCH_DISTANCE, HashList, nearest, pdq_hash, to_hex
from models.resize import resize_uint8


@dataclass(frozen=True)
class Inspection:
    """What ingest learned from one file; `pixels` is None whenever the file must stay out of the cache."""

    sha256: str | None = None
    pdq: str | None = None
    pdq_quality: int | None = None
    width: int | None = None
    height: int | None = None
    normalised: str | None = None
    reason: str | None = None
    detail: str | None = None
    pixels: np.ndarray | None = None


@dataclass(frozen=True)
class Cropping:
    """How a clean image becomes its cached pixels: the shared face crop, then the shared resize to `size`."""

    convention: CropConvention
    size: int


def resolve_inside(root: Path, relative: str) -> Path | None:
    """The file's absolute path, or None when the manifest points outside the dataset root (`../`, absolute)."""
    base = root.resolve()
    target = (base / relative).resolve()
    return target if target.is_relative_to(base) else None


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


def _form(name: str) -> str:
    for form in ("NFC", "NFD"):
        if unicodedata.is_normalized(form, name):
            return form
    return "mixed normalisation"


def name_mismatch(root: Path, relative: str) -> str | None:
    """Why a listed path that does not exist is still there under another spelling, or None when it is not.

    Tables written on one system and files copied from another often disagree in Unicode form
    (macOS writes NFD) or letter case; the two names print alike, so the message spells both out.
    """
    current, found = root, []
    for part in PurePosixPath(relative).parts:
        if not (current / part).exists():
            siblings = [p.name for p in current.iterdir() if _fold(p.name) == _fold(part)] if current.is_dir() else []
            if len(siblings) != 1:
                return None
            part = siblings[0]
        found.append(part)
        current = current / part
    on_disk = "/".join(found)
    if not current.is_file() or on_disk == relative:
        return None
    if unicodedata.normalize("NFC", on_disk) == unicodedata.normalize("NFC", relative):
        how = f"listed as {relative!r} ({_form(relative)}, {relative!a}) but the file on disk is {on_disk!r} "
        how += f"({_form(on_disk)}, {on_disk!a}): the names differ only in Unicode normalisation"
    else:
        how = f"listed as {relative!r} but the file on disk is {on_disk!r}: the names differ only in letter case"
    return f"{how}. Rename the file or the table entry so the two match byte for byte."


def _pixels(rgb: np.ndarray, box: tuple[float, ...], cropping: Cropping) -> np.ndarray:
    """The face crop when there is a box (all four coordinates NaN means none), else the whole image, resized."""
    region = rgb if np.isnan(box).all() else crop_face(rgb, box, cropping.convention)
    return resize_uint8(region, cropping.size)


def inspect_file(
    root: Path, relative: str, box: tuple[float, ...], cropping: Cropping, min_size: int, hash_list: HashList
) -> Inspection:
    """Hash, screen, check and (only if clean) crop one image. Screening comes first and wins over any other reason."""
    path = resolve_inside(root, relative)
    if path is None:
        return Inspection(reason="path_escapes_root", detail=f"'{relative}' resolves outside {root}")
    if not path.is_file():
        mismatch = name_mismatch(root, relative)
        if mismatch is not None:
            return Inspection(reason="filename_mismatch", detail=mismatch)
        return Inspection(reason="missing_file", detail=f"{path} does not exist")
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        decoded = decode_image(data)
    except DecodeError as error:
        return Inspection(sha256=sha256, reason=error.reason, detail=f"'{relative}': {error}")
    rgb = decoded.rgb
    packed, quality = pdq_hash(rgb)
    height, width = rgb.shape[:2]
    found = Inspection(sha256, to_hex(packed), quality, width, height, decoded.notes or None)
    match = hash_list.match(packed)
    if match is not None:
        return replace(found, reason="hash_list_match", detail=f"PDQ {found.pdq} within {match[1]} bits of {match[0]}")
    if min(width, height) < min_size:
        return replace(found, reason="too_small", detail=f"{width}x{height} is below data.min_image_size={min_size}")
    try:
        return replace(found, pixels=_pixels(rgb, box, cropping))
    except BoxError as error:
        return replace(found, reason="bad_box", detail=f"{error} (box_x0..box_y1, in pixels of the upright image)")


def start_worker() -> None:
    """Run once in each ingest process: torch on one thread, as the pool of processes is the parallelism."""
    torch.set_num_threads(1)


def inspect_chunk(
    root: Path, rows: pd.DataFrame, cropping: Cropping, min_size: int, hash_list: HashList
) -> list[Inspection]:
    """A worker's share of the files (run in a process pool).

    A box cell that holds text is made infinite, so that its row is a `bad_box` rather than a crash
    or, were it NaN like an empty cell, silently no box at all.
    """
    cells = rows[list(BOX_COLUMNS)]
    numbers = cells.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    boxes = np.where(np.isnan(numbers) & cells.notna().to_numpy(), np.inf, numbers)
    return [
        inspect_file(root, path, tuple(box), cropping, min_size, hash_list)
        for path, box in zip(rows["path"], boxes, strict=True)
    ]


def label_problems(
    manifest: pd.DataFrame, task: str, age_range: tuple[float, float], classes: list[str]
) -> tuple[pd.Series, pd.Series]:
    """`label_missing` / `label_unparsable` / `label_out_of_range` per row (None when fine), and what failed.

    The detail quotes the label as the table wrote it (`label_raw`) and where (`source`), so a text
    age such as "fifty-five" is reported as written, not as NaN.
    """
    raw = [v if isinstance(v, str) and v.strip() else None for v in manifest["label_raw"]]
    if task == "age":
        column, value = "age", pd.to_numeric(manifest["age"], errors="coerce")
        out, allowed = ~value.between(*age_range), f"[{age_range[0]}, {age_range[1]}]"
    else:
        column = "label_name"
        value = manifest[column].where(manifest[column].notna() & (manifest[column].astype(str).str.strip() != ""))
        out, allowed = ~value.isin(classes), str(list(classes))
    missing = value.isna().to_numpy()
    unparsable = missing & np.array([text is not None for text in raw], dtype=bool)
    reason = np.where(missing, np.where(unparsable, "label_unparsable", "label_missing"), None)
    reason = np.where(~missing & out.to_numpy(), "label_out_of_range", reason)
    detail = []
    for r, v, text, source in zip(reason, value, raw, manifest["source"], strict=True):
        where = f" ({source})" if isinstance(source, str) else ""
        shown = repr(text) if text is not None else repr(v)
        if r == "label_unparsable":
            detail.append(f"{column} {shown}{where} is not a number")
        else:
            detail.append(None if r is None else f"{column}={shown}{where}, allowed {allowed}")
    return pd.Series(reason, manifest.index, dtype=object), pd.Series(detail, manifest.index, dtype=object)


def identical_images(rows: pd.DataFrame, label: str) -> tuple[pd.Series, pd.Series]:
    """Reasons for files whose bytes another row also has (rows in path order, NaN sha256 ignored).

    Under one label, every copy after the first is a `duplicate_sha256` naming the kept one. Under
    different labels the data contradicts itself and nobody can say which label is right, so every
    copy is a `label_conflict` naming all the files and their labels.
    """
    reason = pd.Series(None, rows.index, dtype=object)
    detail = pd.Series(None, rows.index, dtype=object)
    copies = rows[rows["sha256"].notna() & rows["sha256"].duplicated(keep=False)]
    for sha256, group in copies.groupby("sha256", sort=False):
        if group[label].astype(str).nunique() > 1:
            listing = "; ".join(f"'{p}' as {label}={v!r}" for p, v in zip(group["path"], group[label], strict=True))
            reason[group.index] = "label_conflict"
            detail[group.index] = (
                f"the same image (sha256 {sha256[:16]}) has different labels: {listing}. Every copy is quarantined "
                "until the labels agree; correct the wrong one."
            )
        else:
            first = group["path"].iloc[0]
            reason[group.index[1:]] = "duplicate_sha256"
            detail[group.index[1:]] = f"the same bytes (sha256 {sha256[:16]}) as '{first}', the copy that is kept"
    return reason, detail


def near_duplicates_across_splits(pdq: pd.Series, split: pd.Series, max_distance: int = MATCH_DISTANCE) -> pd.DataFrame:
    """Per row: `leak` (PDQ within `max_distance` of an image in an earlier split), its closest `earlier` image
    (a position in `pdq`, -1 when none) and their `distance` in bits.

    Splits are ordered train < val < calib < test. The later-split copy is the leak (an evaluation
    image the model effectively trained on), so it is the one quarantined. Time is quadratic in
    images, memory is not (`nearest`).
    """
    packed = np.stack([np.frombuffer(bytes.fromhex(h), np.uint8) for h in pdq]) if len(pdq) else np.empty((0, 32))
    order = split.map({name: k for k, name in enumerate(SPLITS)}).to_numpy()
    leak = np.zeros(len(pdq), dtype=bool)
    closest, distance = np.full(len(pdq), -1), np.full(len(pdq), -1)
    for rank in range(1, len(SPLITS)):
        queries, earlier = np.flatnonzero(order == rank), np.flatnonzero(order < rank)
        if len(queries) and len(earlier):
            positions, distance[queries] = nearest(packed[queries], packed[earlier])
            closest[queries] = earlier[positions]
            leak[queries] = distance[queries] <= max_distance
    return pd.DataFrame({"leak": leak, "earlier": closest, "distance": distance}, index=pdq.index)
