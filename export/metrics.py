"""Headline metrics with confidence intervals, overall and per attribute slice, for the contract and card.

They are evaluate's own figures (`evaluation.age.mean_absolute_error`, `evaluation.content.accuracy`),
so a contract and an evaluation of the same predictions carry the same value and interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from calibration.operating_points import row_units
from evaluation.age import mean_absolute_error
from evaluation.content import accuracy


def headline(task: str, outputs: dict[str, np.ndarray], rows: pd.DataFrame, target: str) -> dict:
    """MAE (age) or accuracy (content) as `{"value", "ci_low", "ci_high", "n"}`, plus a reason where one is None."""
    targets, subjects = rows[target].to_numpy(), row_units(rows)
    if task == "age":
        return mean_absolute_error(outputs["expected_age"], targets, subjects).to_dict()
    return accuracy(outputs["probabilities"], targets, subjects).to_dict()


def sliced(
    task: str, outputs: dict[str, np.ndarray], rows: pd.DataFrame, target: str, attributes: list[str]
) -> dict[str, dict[str, dict]]:
    """The headline metric per value of each attribute column the manifest has."""
    slices: dict[str, dict[str, dict]] = {}
    for attribute in (a for a in attributes if a in rows.columns):
        slices[attribute] = {}
        for value in sorted(rows[attribute].astype(str).unique()):
            members = (rows[attribute].astype(str) == value).to_numpy()
            subset = {key: array[members] for key, array in outputs.items()}
            slices[attribute][value] = headline(task, subset, rows[members], target)
    return slices
