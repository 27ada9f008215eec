"""Generic manifests (CSV or Parquet) and ImageFolder trees, for data that follows no published format."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pandas as pd

from core.errors import WorkbenchError
from datamodules.licensed.base import (
    BOX_COLUMNS,
    candidates,
    image_files,
    read_table,
    require_columns,
    table_sources,
    written,
)

AGE_OPTIONAL = ("subject_id", "sex", "skin_tone", *BOX_COLUMNS)


def table_rows(root: Path, file: str, label: str, column: str, optional: tuple[str, ...]) -> pd.DataFrame:
    """Rows of a listed manifest: the table's `label` column becomes the workbench's `column`, kept as written too."""
    table = read_table(root / file)
    require_columns(table, ["path", label], root / file)
    rows = table[["path", *[c for c in optional if c in table]]].assign(
        **{column: table[label]}, label_raw=written(table[label]), source=table_sources(root / file, len(table))
    )
    return candidates(rows.assign(id=rows["path"]).to_dict("records"))


@dataclass(frozen=True)
class AgeManifest:
    """`file` (relative to data.root) with columns path, age and optionally subject_id, sex, skin_tone, box_*."""

    file: str = "manifest.csv"
    task: ClassVar[str] = "age"

    def label_files(self) -> list[str]:
        return [self.file]

    def read(self, root: Path) -> pd.DataFrame:
        rows = table_rows(root, self.file, "age", "age", AGE_OPTIONAL)
        return rows.assign(age=pd.to_numeric(rows["age"], errors="coerce"))


@dataclass(frozen=True)
class ContentManifest:
    """`file` (relative to data.root) with columns path and label (a class name) and optionally subject_id."""

    file: str = "manifest.csv"
    task: ClassVar[str] = "content"

    def label_files(self) -> list[str]:
        return [self.file]

    def read(self, root: Path) -> pd.DataFrame:
        return table_rows(root, self.file, "label", "label_name", ("subject_id",))


@dataclass(frozen=True)
class ImageFolder:
    """One folder per source category, mapped onto the workbench's classes by `folder_classes`.

    Public scrapes use five folders (drawings/hentai/neutral/porn/sexy); the mapping, not the folder
    names, decides what the model learns, so it is explicit config and recorded with the run.
    """

    folder_classes: dict[str, str] = field(default_factory=dict)
    task: ClassVar[str] = "content"

    def label_files(self) -> list[str]:
        return []

    def read(self, root: Path) -> pd.DataFrame:
        """One row per file in a mapped folder; an empty folder is an error, since its class would go unlearnt."""
        folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        unmapped = [f for f in folders if f not in self.folder_classes]
        if unmapped:
            raise WorkbenchError(
                f"Folder(s) {', '.join(unmapped)} under {root} have no class in data.adapter.folder_classes "
                f"(which maps {dict(self.folder_classes)}). Add each folder with the class it belongs to."
            )
        records = []
        for folder in folders:
            files = image_files(root / folder)
            if not files:
                raise WorkbenchError(
                    f"Folder {root / folder} (class {self.folder_classes[folder]!r} in data.adapter.folder_classes) "
                    "holds no files. Add its images, or remove the empty folder so the mapping matches the data."
                )
            for path in files:
                relative = path.relative_to(root).as_posix()
                records.append({"id": relative, "path": relative, "label_name": self.folder_classes[folder]})
        return candidates(records)
