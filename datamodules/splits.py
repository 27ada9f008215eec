"""Splits for licensed data: subject-disjoint, stratified by age band (or class), persisted once made.

Persisting matters because a dataset grows: when images are added, the images already assigned
keep their split, so runs before and after stay comparable and no old test image drifts into train.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from core.errors import WorkbenchError
from datamodules.manifest import check_split_fractions

AGE_BANDS = (13, 16, 18, 25, 35, 50, 65)  # the gates and the decades around them
MAX_FOLDS = 20


def label_strata(labels: pd.Series, task: str) -> np.ndarray:
    """The stratum of each label: its age band (AGE_BANDS) or its class; -1 for a missing label."""
    if task == "age":
        ages = pd.to_numeric(labels, errors="coerce").to_numpy(dtype=float)
        return np.where(np.isnan(ages), -1, np.digitize(ages, AGE_BANDS))
    return pd.factorize(labels, sort=True)[0]


def strata(manifest: pd.DataFrame, task: str) -> np.ndarray:
    return label_strata(manifest["age"] if task == "age" else manifest["label"], task)


def groups(manifest: pd.DataFrame) -> np.ndarray:
    """Subjects where known; otherwise each image is its own group."""
    return manifest["subject_id"].fillna(manifest["id"]).astype(str).to_numpy()


def stratified_group_split(
    labels: np.ndarray, group_ids: np.ndarray, fractions: dict[str, float], seed: int
) -> np.ndarray:
    """Assign whole groups to named splits in the given fractions, keeping each stratum's share alike.

    StratifiedGroupKFold makes up to 20 folds; each split takes a run of folds proportional to its fraction.
    """
    names = [name for name, share in fractions.items() if share > 0]
    n_groups = len(np.unique(group_ids))
    if n_groups < len(names):
        raise WorkbenchError(
            f"Only {n_groups} subjects/images remain, too few to fill the splits {names}. Add data or change "
            "data.split_fractions."
        )
    if np.unique(labels, return_counts=True)[1].max() < len(names):
        labels = np.zeros(len(labels), dtype=int)  # strata too small to stratify: split by group only
    n_folds = min(MAX_FOLDS, n_groups, np.unique(labels, return_counts=True)[1].max())
    fold_of = np.empty(len(labels), dtype=int)
    with warnings.catch_warnings():  # small strata trigger sklearn's "least populated class" warning
        warnings.simplefilter("ignore", UserWarning)
        folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        for fold, (_, members) in enumerate(folds.split(np.zeros(len(labels)), labels, group_ids)):
            fold_of[members] = fold
    shares = np.array([fractions[name] for name in names]) / sum(fractions[name] for name in names)
    counts = np.maximum(1, np.round(shares * n_folds).astype(int))  # every split gets at least one fold
    counts[counts.argmax()] += n_folds - counts.sum()
    return np.array(names)[np.searchsorted(np.cumsum(counts), fold_of, side="right")]


def assign_splits(
    manifest: pd.DataFrame,
    task: str,
    fractions: dict[str, float],
    seed: int,
    holdout_subject: str | None = None,
) -> pd.Series:
    """The split of each row: the dataset's own splits when it has them (calib carved from val), else fresh ones."""
    check_split_fractions(fractions)
    labels, group_ids = strata(manifest, task), groups(manifest)
    split = pd.Series(manifest["split"].to_numpy(), index=manifest.index, dtype=object)
    if split.notna().all():
        val = (split == "val").to_numpy()
        if val.sum() >= 2:
            half = {"val": fractions["val"], "calib": fractions["calib"]}
            split[val] = stratified_group_split(labels[val], group_ids[val], half, seed)
        return split
    free = np.ones(len(manifest), dtype=bool)
    if holdout_subject is not None:
        held = (manifest["subject_id"] == holdout_subject).to_numpy()
        if not held.any():
            raise WorkbenchError(f"data.holdout_subject={holdout_subject!r} is not a subject of this dataset.")
        split[held], free = "test", ~held
        fractions = {name: share for name, share in fractions.items() if name != "test"}
    split[free] = stratified_group_split(labels[free], group_ids[free], fractions, seed)
    return split


def reuse_persisted(manifest: pd.DataFrame, split: pd.Series, path: Path) -> pd.Series:
    """Keep the split an id (or its subject) was given before; record any new assignments."""
    if path.is_file():
        before = pd.read_parquet(path)
        by_id = dict(zip(before["id"], before["split"], strict=True))
        by_subject = before.dropna(subset=["subject_id"]).drop_duplicates("subject_id")
        by_subject = dict(zip(by_subject["subject_id"], by_subject["split"], strict=True))
        subject_split = manifest["subject_id"].map(by_subject)
        split = manifest["id"].map(by_id).fillna(subject_split).fillna(split)
        manifest_ids = set(manifest["id"])
        kept = before[~before["id"].isin(manifest_ids)]
    else:
        kept = pd.DataFrame(columns=["id", "subject_id", "split"])
    path.parent.mkdir(parents=True, exist_ok=True)
    current = pd.DataFrame({"id": manifest["id"], "subject_id": manifest["subject_id"], "split": split})
    staging = path.with_suffix(".tmp")
    pd.concat([kept, current]).to_parquet(staging, index=False)
    staging.replace(path)
    return split
