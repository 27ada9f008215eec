"""The shape every adapter returns, so ingest treats all formats alike.

An adapter reads only names and label files; it never opens images. It returns one row per file
it found, good or bad: a row the adapter cannot use carries a `reason` (and is still hash-screened
at ingest, because every file in a dataset folder is screened, whatever its name). Table adapters
keep each label as written (`label_raw`) and where it was written (`source`, e.g.
"gt_avg_train.csv row 7"), so the quarantine report can quote a label that does not parse.
Files on disk that no row lists are added by ingest as `unlisted_file` rows, except the files
`label_files` names.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.errors import WorkbenchError

BOX_COLUMNS = ("box_x0", "box_y0", "box_x1", "box_y1")
# Rows an adapter leaves out by the dataset's own documented policy (e.g. IMDB-WIKI's face scores):
# reported, but not counted as integrity failures against data.max_bad_fraction.
FILTER_REASONS = frozenset({"no_face", "low_face_score", "second_face"})


def candidates(records: list[dict]) -> pd.DataFrame:
    """Rows with every column ingest expects present, in a stable order."""
    frame = pd.DataFrame.from_records(records)
    for column in ("id", "path", "subject_id", "split", "reason", "detail", "label_raw", "source", *BOX_COLUMNS):
        if column not in frame:
            frame[column] = None
    return frame.sort_values("path", kind="stable").reset_index(drop=True)


def image_files(root: Path) -> list[Path]:
    """Every non-hidden file under `root`, sorted, so a stray file is screened and reported, not skipped."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.parts[-1:]))


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or Parquet label table; the error names the file when it is absent or unreadable."""
    if not path.is_file():
        raise WorkbenchError(f"Label file {path} is missing. Check data.root points at the dataset's top folder.")
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError) as error:  # EmptyDataError and UnicodeDecodeError included
        raise WorkbenchError(
            f"Label file {path} cannot be read as a {'Parquet' if path.suffix == '.parquet' else 'CSV'} table "
            f"({type(error).__name__}: {error}). Check it is the dataset's own file, complete and not re-encoded."
        ) from error


def written(values: pd.Series) -> list[str | None]:
    """Each label as text, as the table held it (None where the cell is empty)."""
    return [None if pd.isna(v) else str(v) for v in values]


def table_sources(path: Path, count: int) -> list[str]:
    """Where each row of a label table is, counted from 1 after the header, for messages a person can follow."""
    return [f"{path.name} row {i + 1}" for i in range(count)]


def require_columns(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise WorkbenchError(
            f"{path} has no column {', '.join(missing)} (it has {', '.join(map(str, frame.columns))}). "
            "Rename the column in the file, or use the adapter that matches this format."
        )
