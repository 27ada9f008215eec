"""Estimates with confidence intervals, and an honest "not measurable" when the data cannot say.

Proportions get exact Clopper-Pearson intervals. Everything else (MAE, AUC, ratios) gets a
percentile bootstrap that resamples *subjects*, not images: images of one person are not
independent, and resampling them as if they were makes intervals too narrow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import bootstrap

from calibration.operating_points import clopper_pearson

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    value: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0
    reason: str = ""

    @property
    def measurable(self) -> bool:
        return self.value is not None and math.isfinite(self.value)

    def excludes(self, reference: float) -> bool:
        """True when the interval lies wholly on one side of `reference` (a flagged difference)."""
        if not self.measurable or self.low is None or self.high is None or not math.isfinite(reference):
            return False
        return reference < self.low or reference > self.high

    def text(self, digits: int = 4) -> str:
        if not self.measurable:
            return f"not measurable: {self.reason}"
        if self.low is None:
            return f"{self.value:.{digits}f} (n={self.n})"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}] (n={self.n})"

    def to_dict(self) -> dict:
        return asdict(self)


def not_measurable(reason: str, n: int = 0) -> Estimate:
    return Estimate(None, n=n, reason=reason)


def proportion(hits: np.ndarray, what: str) -> Estimate:
    """Share of True in `hits`, with its exact 95% interval; not measurable when there is nothing to count."""
    hits = np.asarray(hits, dtype=bool)
    if hits.size == 0:
        return not_measurable(f"no {what} in this data")
    low, high = clopper_pearson(int(hits.sum()), int(hits.size), CONFIDENCE)
    return Estimate(float(hits.mean()), low, high, int(hits.size))


def subject_bootstrap(
    statistic: Callable[[np.ndarray], float], subjects: np.ndarray, what: str, n_resamples: int = 1000, seed: int = 0
) -> Estimate:
    """`statistic(row_indices)` with a percentile interval from resampling whole subjects."""
    subjects = np.asarray(subjects)
    if subjects.size == 0:
        return not_measurable(f"no {what} in this data")
    value = float(statistic(np.arange(subjects.size)))
    unique, inverse = np.unique(subjects, return_inverse=True)
    if unique.size < 2 or not math.isfinite(value):
        return Estimate(
            value if math.isfinite(value) else None,
            n=int(subjects.size),
            reason=f"too few subjects for an interval on {what}",
        )
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(unique.size))
    rows_of = np.split(order, starts[1:])

    def resampled(chosen: np.ndarray) -> float:
        return statistic(np.concatenate([rows_of[int(i)] for i in chosen]))

    result = bootstrap(
        (np.arange(unique.size),),
        resampled,
        vectorized=False,
        n_resamples=n_resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        random_state=seed,
    )
    low, high = result.confidence_interval
    return Estimate(value, float(low), float(high), int(subjects.size))
