"""Fairness slices: every headline metric per attribute value and per attribute pair, with flags.

A slice whose 95% interval excludes the overall value differs from it; it is flagged (a harm) only
when it differs in the direction that is worse for that group: a higher MAE or minor pass rate, a
lower accuracy, recall or interval coverage. A slice better than overall is listed as such, never
flagged. The disparity ratio (largest / smallest slice value of the headline metric) gets a
subject-bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations

import numpy as np
import pandas as pd

from calibration.operating_points import row_units
from evaluation.stats import Estimate, not_measurable, subject_bootstrap

SliceMetric = Callable[[pd.DataFrame], Estimate]
LOWER_IS_WORSE = ("accuracy", "recall", "interval_coverage")  # every other sliced metric: higher is worse


def higher_is_worse(metric: str) -> bool:
    return not metric.endswith(LOWER_IS_WORSE)


def comparison_to_overall(estimate: Estimate, overall: float, metric: str) -> str:
    """'worse than overall' (a harm), 'better than overall', or '' when the interval contains the overall value."""
    if not estimate.excludes(overall):
        return ""
    above = estimate.value > overall
    return "worse than overall" if above == higher_is_worse(metric) else "better than overall"


def slice_columns(frame: pd.DataFrame, attributes: list[str]) -> list[str]:
    """Single attributes, then each pair joined as `a x b` (added to the frame as a column)."""
    present = [a for a in attributes if a in frame.columns]
    for first, second in combinations(present, 2):
        frame[f"{first} x {second}"] = frame[first].astype(str) + " / " + frame[second].astype(str)
    return present + [f"{a} x {b}" for a, b in combinations(present, 2)]


def fairness_table(
    frame: pd.DataFrame, attributes: list[str], metrics: dict[str, SliceMetric], overall: dict[str, Estimate]
) -> pd.DataFrame:
    rows = []
    for column in slice_columns(frame, attributes):
        for value, part in frame.groupby(column, sort=True):
            for name, metric in metrics.items():
                estimate = metric(part) if len(part) else not_measurable("empty slice")
                reference = overall[name].value if overall[name].measurable else float("nan")
                versus = comparison_to_overall(estimate, reference, name)
                rows.append(
                    {
                        "attribute": column,
                        "value": str(value),
                        "metric": name,
                        "estimate": estimate.text(),
                        "value_num": estimate.value,
                        "low": estimate.low,
                        "high": estimate.high,
                        "n": estimate.n,
                        "versus overall": versus,
                        "flagged": versus == "worse than overall",
                    }
                )
    return pd.DataFrame(rows)


def disparity_ratio(frame: pd.DataFrame, attribute: str, per_rows: Callable[[np.ndarray], float]) -> Estimate:
    """max/min over the attribute's values of `per_rows(row indices)`, with a subject-bootstrap interval."""
    if attribute not in frame.columns:
        return not_measurable(f"the data has no '{attribute}' column")
    values = frame[attribute].astype(str).to_numpy()

    def ratio(rows: np.ndarray) -> float:
        levels = [per_rows(rows[values[rows] == v]) for v in np.unique(values[rows])]
        levels = [v for v in levels if np.isfinite(v)]
        return max(levels) / min(levels) if len(levels) > 1 and min(levels) > 0 else np.nan

    return subject_bootstrap(ratio, row_units(frame), "samples", n_resamples=300)
