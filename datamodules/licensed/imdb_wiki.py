"""IMDB-WIKI: `imdb.mat` / `wiki.mat` metadata (Matlab structs) beside the image folders."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import scipy.io

from core.errors import WorkbenchError
from datamodules.licensed.base import candidates

FIELDS = ("full_path", "dob", "photo_taken", "gender", "face_location", "face_score", "second_face_score")


def age_at_photo(dob_serial: float, photo_taken: int) -> float:
    """Age in the year the photo was taken, assuming (as the publishers do) it was taken mid-year.

    `dob` is a Matlab serial date: days since year 0, so Python's ordinal is 366 days less.
    """
    if not np.isfinite(dob_serial) or dob_serial < 367:
        return float("nan")
    born = datetime.fromordinal(int(dob_serial)) + timedelta(days=dob_serial % 1) - timedelta(days=366)
    return float(photo_taken - born.year - (1 if born.month >= 7 else 0))


@dataclass(frozen=True)
class ImdbWiki:
    """`source`: `imdb` or `wiki`. Faces below `min_face_score`, and photos with a second face scoring above
    `max_second_face_score` (null: any second face), are filtered as the dataset's authors recommend."""

    source: str = "wiki"
    min_face_score: float = 1.0
    max_second_face_score: float | None = None
    task: ClassVar[str] = "age"

    def label_files(self) -> list[str]:
        return [f"{self.source}.mat"]

    def read(self, root: Path) -> pd.DataFrame:
        mat_path = root / f"{self.source}.mat"
        if not mat_path.is_file():
            raise WorkbenchError(f"{mat_path} is missing: data.adapter.source={self.source!r} expects it in data.root.")
        struct = scipy.io.loadmat(mat_path, squeeze_me=True)[self.source]
        missing = [f for f in FIELDS if f not in struct.dtype.names]
        if missing:
            raise WorkbenchError(f"{mat_path}: the '{self.source}' struct has no field {', '.join(missing)}.")
        meta = {f: np.atleast_1d(struct[f].item()) for f in (*FIELDS, "name", "celeb_id") if f in struct.dtype.names}
        records = []
        for i, path in enumerate(meta["full_path"]):
            path = str(path)
            box = np.atleast_1d(np.asarray(meta["face_location"][i], dtype=float)).ravel()
            gender = float(meta["gender"][i])
            subject = meta["celeb_id"][i] if "celeb_id" in meta else meta["name"][i] if "name" in meta else None
            record = {
                "id": path,
                "path": path,
                "age": age_at_photo(float(meta["dob"][i]), int(meta["photo_taken"][i])),
                "subject_id": f"{self.source}-{subject}" if subject is not None else None,
                "sex": "unknown" if np.isnan(gender) else ("male" if gender == 1 else "female"),
                "face_score": float(meta["face_score"][i]),
                "second_face_score": float(meta["second_face_score"][i]),
            }
            if box.size == 4:
                record |= dict(zip(("box_x0", "box_y0", "box_x1", "box_y1"), box.tolist(), strict=True))
            records.append(record | self._filter(record))
        return candidates(records)

    def _filter(self, record: dict) -> dict:
        score, second = record["face_score"], record["second_face_score"]
        if not np.isfinite(score):
            return {"reason": "no_face", "detail": "face_score is -inf: the detector found no face"}
        if score < self.min_face_score:
            return {"reason": "low_face_score", "detail": f"face_score {score:.2f} < {self.min_face_score}"}
        if np.isfinite(second) and (self.max_second_face_score is None or second > self.max_second_face_score):
            return {"reason": "second_face", "detail": f"second_face_score {second:.2f}: more than one face"}
        return {}
