"""Headline metrics with confidence intervals, overall and per attribute slice, for the contract and card."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import bootstrap

from calibration.operating_points import clopper_pearson


def _mae_with_ci(errors: np.ndarray, subjects: np.ndarray) -> dict[str, float]:
    """Bootstrap over subjects, not images: images of one subject are not independent."""
    per_subject = pd.Series(errors).groupby(subjects).mean().to_numpy()
    if per_subject.size < 2:
        return {"value": float(errors.mean()), "ci_low": float("nan"), "ci_high": float("nan"), "n": int(errors.size)}
    ci = bootstrap(
        (per_subject,), np.mean, confidence_level=0.95, n_resamples=2000, method="percentile", random_state=0
    ).confidence_interval
    return {"value": float(errors.mean()), "ci_low": float(ci.low), "ci_high": float(ci.high), "n": int(errors.size)}


def _accuracy_with_ci(correct: np.ndarray) -> dict[str, float]:
    low, high = clopper_pearson(int(correct.sum()), int(correct.size))
    return {"value": float(correct.mean()), "ci_low": low, "ci_high": high, "n": int(correct.size)}


def headline(task: str, outputs: dict[str, np.ndarray], rows: pd.DataFrame, target: str) -> dict[str, float]:
    targets = rows[target].to_numpy()
    if task == "age":
        return _mae_with_ci(np.abs(outputs["expected_age"] - targets), rows["subject_id"].to_numpy())
    return _accuracy_with_ci(outputs["probabilities"].argmax(1) == targets)


def sliced(
    task: str, outputs: dict[str, np.ndarray], rows: pd.DataFrame, target: str, attributes: list[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """The headline metric per value of each attribute column the manifest has."""
    slices: dict[str, dict[str, dict[str, float]]] = {}
    for attribute in (a for a in attributes if a in rows.columns):
        slices[attribute] = {}
        for value in sorted(rows[attribute].astype(str).unique()):
            members = (rows[attribute].astype(str) == value).to_numpy()
            subset = {key: array[members] for key, array in outputs.items()}
            slices[attribute][value] = headline(task, subset, rows[members], target)
    return slices
