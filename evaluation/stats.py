"""Estimates with confidence intervals, and an honest "not measurable" when the data cannot say.

Proportions get exact Clopper-Pearson intervals; an operating point's rates count people or scenes
(`unit_proportion`, the contract's own `unit_rate`). Everything else (MAE, accuracy, AUC, ratios) gets
a percentile bootstrap that resamples *subjects* (scenes for content), not images: images of one
person are not independent, and resampling them as if they were makes intervals too narrow.
Every bootstrapped interval is widened, where needed, to contain its own value, so a reported
figure never lies outside its interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import bootstrap

from calibration.operating_points import clopper_pearson, unit_rate

CONFIDENCE = 0.95
N_RESAMPLES = 2000
SEED = 0


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

    def complement(self) -> Estimate:
        """1 - this share, its interval mirrored: a recall from a miss rate."""
        if not self.measurable:
            return self
        low, high = (None, None) if self.low is None else (1 - self.high, 1 - self.low)
        return Estimate(1 - self.value, low, high, self.n, self.reason)

    def to_dict(self) -> dict[str, float | int | str | None]:
        """The contract's form of this figure: `None` and a reason, never NaN, where there is no number."""
        figure = {"value": self.value if self.measurable else None, "ci_low": self.low, "ci_high": self.high}
        figure |= {"n": self.n} | ({"reason": self.reason} if self.reason else {})
        return figure


def not_measurable(reason: str, n: int = 0) -> Estimate:
    return Estimate(None, n=n, reason=reason)


def bare(value: float, n: int, reason: str) -> Estimate:
    """A figure without an interval; a non-finite value becomes "not measurable" with `reason`."""
    return Estimate(float(value), n=n) if math.isfinite(value) else not_measurable(reason, n)


def proportion(hits: np.ndarray, what: str) -> Estimate:
    """Share of True in `hits`, with its exact 95% interval; not measurable when there is nothing to count."""
    hits = np.asarray(hits, dtype=bool)
    if hits.size == 0:
        return not_measurable(f"no {what} in this data")
    low, high = clopper_pearson(int(hits.sum()), int(hits.size), CONFIDENCE)
    return Estimate(float(hits.mean()), low, high, int(hits.size))


def unit_proportion(hits: np.ndarray, units: np.ndarray, what: str) -> Estimate:
    """Share of units (people, scenes) with any hit, exact interval over units; n counts units.

    It is `calibration.operating_points.unit_rate`, which the contract's certificates and test rates
    use, so an operating point's rate in evaluate equals the contract's for the same predictions.
    """
    rate = unit_rate(hits, units, CONFIDENCE)
    if rate["rate"] is None:
        return not_measurable(f"no {what} in this data")
    return Estimate(rate["rate"], rate["ci_low"], rate["ci_high"], rate["units"])


def _bootstrapped(
    value: float,
    samples: tuple[np.ndarray, ...],
    statistic: Callable,
    n: int,
    what: str,
    *,
    vectorized: bool,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Estimate:
    """`value` with the percentile interval of `statistic` over `samples` resampled together (one row a
    subject), widened to contain the value (the percentile interval of a skewed or ratio statistic
    need not), or without one when resamples leave the statistic undefined."""
    result = bootstrap(
        samples,
        statistic,
        paired=True,
        vectorized=vectorized,
        n_resamples=n_resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        random_state=seed,
    )
    low, high = result.confidence_interval
    if not (math.isfinite(low) and math.isfinite(high)):
        return Estimate(value, n=n, reason=f"no interval on {what}: some resamples leave it undefined")
    return Estimate(value, min(float(low), value), max(float(high), value), n)


def _pooled_mean(sums: np.ndarray, counts: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over all images of the resampled subjects, from their sums and image counts (vectorised)."""
    return sums.sum(axis=axis) / counts.sum(axis=axis)


def subject_mean(values: np.ndarray, subjects: np.ndarray, what: str) -> Estimate:
    """Per-image mean of `values` with a 95% interval from resampling whole subjects.

    The statistic bootstrapped is the reported one: each resample draws subjects with replacement
    and takes the mean over all their images (sum of per-subject sums / sum of per-subject image
    counts), so uneven images per subject weigh exactly as in the value. Vectorised in scipy.
    `subjects` holds one id per image (`calibration.operating_points.row_units` of the rows).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return not_measurable(f"no {what} in this data")
    if not np.isfinite(values).all():
        return not_measurable(f"some {what} have no finite value", int(values.size))
    codes = pd.factorize(np.asarray(subjects))[0]
    sums, counts = np.bincount(codes, weights=values), np.bincount(codes).astype(np.float64)
    value = float(sums.sum() / counts.sum())
    if sums.size < 2:
        return Estimate(value, n=int(values.size), reason=f"too few subjects for an interval on {what}")
    return _bootstrapped(value, (sums, counts), _pooled_mean, int(values.size), what, vectorized=True)


def subject_rate(hits: np.ndarray, subjects: np.ndarray, what: str) -> Estimate:
    """Share of images that are hits, with `subject_mean`'s interval, or an exact one where that says nothing.

    When no image (or every image) is a hit, every resample is too, and the bootstrap claims
    certainty: [0, 0]. Then the Clopper-Pearson interval over subjects, each subject one trial that
    is a hit if any of its images is, bounds the rate instead (it can only be wider).
    """
    estimate = subject_mean(np.asarray(hits, dtype=np.float64), subjects, what)
    if not estimate.measurable or 0.0 < estimate.value < 1.0:
        return estimate
    units = int(pd.unique(np.asarray(subjects)).size)
    low, high = clopper_pearson(round(estimate.value) * units, units, CONFIDENCE)
    return Estimate(estimate.value, low, high, estimate.n)


def subject_bootstrap(
    statistic: Callable[[np.ndarray], float],
    subjects: np.ndarray,
    what: str,
    n_resamples: int = 1000,
    seed: int = SEED,
) -> Estimate:
    """`statistic(row_indices)` with a percentile interval from resampling whole subjects.

    For statistics that are not a mean over images (AUC, ratios); a mean goes through `subject_mean`.
    """
    subjects = np.asarray(subjects)
    if subjects.size == 0:
        return not_measurable(f"no {what} in this data")
    value = float(statistic(np.arange(subjects.size)))
    if not math.isfinite(value):
        return not_measurable(f"{what}: the statistic is undefined on this data", int(subjects.size))
    inverse = pd.factorize(subjects)[0]
    n_units = int(inverse.max()) + 1
    if n_units < 2:
        return Estimate(value, n=int(subjects.size), reason=f"too few subjects for an interval on {what}")
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(n_units))
    rows_of = np.split(order, starts[1:])

    def resampled(chosen: np.ndarray) -> float:
        return statistic(np.concatenate([rows_of[int(i)] for i in chosen]))

    return _bootstrapped(
        value,
        (np.arange(n_units),),
        resampled,
        int(subjects.size),
        what,
        vectorized=False,
        n_resamples=n_resamples,
        seed=seed,
    )
