"""The manifest: one row per image, the single record every later stage trusts.

Columns shared by every dataset: id, subject_id, split, sha256, plus the task's label column(s)
and attribute columns used for fairness slicing.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from core.errors import WorkbenchError

SPLITS = ("train", "val", "calib", "test")


def check_split_fractions(fractions: dict[str, float]) -> None:
    """The one check of `data.split_fractions`, for synthetic and licensed splits alike."""
    if set(fractions) - set(SPLITS) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise WorkbenchError(f"data.split_fractions must name only {SPLITS} and sum to 1; got {dict(fractions)}.")


def assign_subject_splits(manifest: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.DataFrame:
    """Split by subject so no subject's images straddle two splits (identity leakage)."""
    check_split_fractions(fractions)
    subjects = manifest["subject_id"].unique()
    order = np.random.default_rng([seed, 7]).permutation(len(subjects))
    bounds = np.round(np.cumsum([fractions.get(s, 0.0) for s in SPLITS]) * len(subjects)).astype(int)
    split_of_position = np.searchsorted(bounds, np.arange(len(subjects)), side="right")
    split_by_subject = dict(zip(subjects[order], np.array(SPLITS)[split_of_position], strict=True))
    return manifest.assign(split=manifest["subject_id"].map(split_by_subject))


def manifest_digest(manifest: pd.DataFrame) -> str:
    """Content digest of the dataset: every image hash, label and split, in id order."""
    canonical = manifest.sort_values("id").drop(columns=["path"], errors="ignore")
    return hashlib.sha256(canonical.to_csv(index=False).encode()).hexdigest()
