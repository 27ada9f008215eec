"""Datasets whose labels live in the file name: UTKFace, FG-NET and AgeDB."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd

from datamodules.licensed.base import candidates, image_files


@dataclass(frozen=True)
class FilenameAdapter:
    """Parse each file name with the format's pattern; a name that does not parse is quarantined."""

    pattern: ClassVar[str]
    task: ClassVar[str] = "age"

    def parse(self, fields: dict[str, str]) -> dict:
        raise NotImplementedError

    def label_files(self) -> list[str]:
        return []  # the names are the labels: every file is a row already

    def read(self, root: Path) -> pd.DataFrame:
        records = []
        for path in image_files(root):
            relative = path.relative_to(root).as_posix()
            match = re.fullmatch(self.pattern, path.name, flags=re.IGNORECASE)
            record = {"id": relative, "path": relative, "age": float("nan")}
            if match is None:
                record |= {"reason": "unparsable_filename", "detail": f"'{path.name}' does not match {self.pattern}"}
            else:
                record |= self.parse(match.groupdict())
            records.append(record)
        return candidates(records)


@dataclass(frozen=True)
class UTKFace(FilenameAdapter):
    """`[age]_[gender]_[race]_[date&time].jpg` (also the aligned `*.jpg.chip.jpg`); gender 0 male, 1 female."""

    pattern: ClassVar[str] = r"(?P<age>\d+)_(?P<gender>[01])_(?P<race>[0-4])_(?P<stamp>\d+)\.jpg(\.chip\.jpg)?"
    RACES: ClassVar[tuple[str, ...]] = ("white", "black", "asian", "indian", "other")

    def parse(self, fields: dict[str, str]) -> dict:
        sex = "male" if fields["gender"] == "0" else "female"
        return {"age": float(fields["age"]), "sex": sex, "race": self.RACES[int(fields["race"])]}


@dataclass(frozen=True)
class FGNet(FilenameAdapter):
    """`001A02.JPG`: subject 001 at age 2; a trailing letter (`010A07a.JPG`) marks a second photo at that age."""

    pattern: ClassVar[str] = r"(?P<subject>\d{3})A(?P<age>\d{2})(?P<variant>[a-z]?)\.jpe?g"

    def parse(self, fields: dict[str, str]) -> dict:
        return {"age": float(fields["age"]), "subject_id": f"fgnet-{fields['subject']}"}


@dataclass(frozen=True)
class AgeDB(FilenameAdapter):
    """`id_name_age_gender.jpg`, e.g. `0_MariaCallas_35_f.jpg`; the name identifies the subject."""

    pattern: ClassVar[str] = r"(?P<serial>\d+)_(?P<name>.+)_(?P<age>\d+)_(?P<gender>[mf])\.jpg"

    def parse(self, fields: dict[str, str]) -> dict:
        sex = "male" if fields["gender"].lower() == "m" else "female"
        return {"age": float(fields["age"]), "subject_id": f"agedb-{fields['name']}", "sex": sex}
