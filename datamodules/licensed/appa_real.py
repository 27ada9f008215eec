"""APPA-REAL: `gt_avg_{train,valid,test}.csv` label tables and `<file_name>_face.jpg` face crops."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd

from core.errors import WorkbenchError
from datamodules.licensed.base import candidates, read_table, require_columns, table_sources, written

# The publisher's split names, mapped to the workbench's (calib is carved from valid at ingest).
OWN_SPLITS = {"train": "train", "valid": "val", "test": "test"}


@dataclass(frozen=True)
class AppaReal:
    """`age_label`: `real` (the biological age) or `apparent` (the mean of the human guesses)."""

    age_label: str = "real"
    task: ClassVar[str] = "age"

    def label_files(self) -> list[str]:
        return [f"gt_avg_{own}.csv" for own in OWN_SPLITS]

    def read(self, root: Path) -> pd.DataFrame:
        """One row per listed face crop; a text age ("unknown") stays as written for the quarantine report."""
        if self.age_label not in ("real", "apparent"):
            raise WorkbenchError(f"data.adapter.age_label={self.age_label!r}: choose 'real' or 'apparent'.")
        frames = []
        for own, split in OWN_SPLITS.items():
            table_path = root / f"gt_avg_{own}.csv"
            table = read_table(table_path)
            require_columns(table, ["file_name", "real_age", "apparent_age_avg"], table_path)
            paths = [f"{own}/{name}_face.jpg" for name in table["file_name"]]
            label = table["real_age" if self.age_label == "real" else "apparent_age_avg"]
            frames.append(
                pd.DataFrame(
                    {
                        "id": paths,
                        "path": paths,
                        "age": pd.to_numeric(label, errors="coerce"),
                        "label_raw": written(label),
                        "source": table_sources(table_path, len(table)),
                        "real_age": pd.to_numeric(table["real_age"], errors="coerce"),
                        "apparent_age": pd.to_numeric(table["apparent_age_avg"], errors="coerce"),
                        "split": split,
                    }
                )
            )
        return candidates(pd.concat(frames).to_dict("records"))
