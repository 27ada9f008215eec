"""Thresholds that meet a target rate with a one-sided Clopper-Pearson guarantee.

One rule serves both tasks. Positives are the cases the filter must catch (true minors at a gate,
or unsafe frames); a positive is *missed* when its score falls below the threshold. We choose the
largest threshold (the fewest false alarms) whose upper confidence bound on the miss rate is at
most the target:
- age gate T: score = P(age < T); a minor "passes" the gate when missed; target = max pass rate;
- content: score = P(explicit) or the unsafe score; target = 1 - required recall.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import beta

from tracking.errors import WorkbenchError


def upper_bound(failures: int | np.ndarray, n: int, confidence: float) -> np.ndarray:
    """One-sided Clopper-Pearson upper bound on a proportion."""
    failures = np.asarray(failures)
    bound = beta.ppf(confidence, failures + 1, n - failures)
    return np.where(failures >= n, 1.0, bound)


def clopper_pearson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided exact interval for a proportion; (nan, nan) when n == 0."""
    if n == 0:
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1 - tail, successes + 1, n - successes))
    return low, high


def required_sample_size(max_rate: float, confidence: float) -> int:
    """Smallest n for which zero failures certify the rate (rule of three: about 3 / max_rate)."""
    return math.ceil(math.log(1 - confidence) / math.log(1 - max_rate))


@dataclass(frozen=True)
class OperatingPoint:
    name: str
    threshold: float
    target_max_miss_rate: float
    confidence: float
    positives: int
    misses: int
    miss_rate_upper_bound: float
    false_alarm_rate: float
    negatives: int
    test: dict[str, float] = field(default_factory=dict)  # the same rates measured on the test split
    # What the threshold protects, set once by calibrate and read by export, parity and evaluation:
    # a content class whose recall is certified, "unsafe" (any unsafe class), or "minor" below `gate`.
    target: str = ""
    gate: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def certify_threshold(
    name: str, positive_scores: np.ndarray, negative_scores: np.ndarray, max_miss_rate: float, confidence: float
) -> OperatingPoint:
    """Largest threshold t with UB(#(positive < t) / n) <= max_miss_rate; flag when score >= t."""
    scores = np.sort(np.asarray(positive_scores, dtype=np.float64))
    n = scores.size
    needed = required_sample_size(max_miss_rate, confidence)
    if n < needed:
        raise WorkbenchError(
            f"Operating point '{name}': the calib split has {n} positives, too few to certify a miss rate of at "
            f"most {max_miss_rate:g} at confidence {confidence:g}. Even with zero misses that needs at least "
            f"{needed} positives (rule of three: 3/n). Enlarge the calib split or relax the target."
        )
    bounds = upper_bound(np.arange(n + 1), n, confidence)
    allowed = int(np.flatnonzero(bounds <= max_miss_rate).max())  # misses we may afford
    threshold = float(scores[allowed]) if allowed < n else float(np.nextafter(scores[-1], np.inf))
    misses = int((scores < threshold).sum())  # ties at the threshold are flagged, never missed
    negatives = np.asarray(negative_scores, dtype=np.float64)
    return OperatingPoint(
        name=name,
        threshold=threshold,
        target_max_miss_rate=max_miss_rate,
        confidence=confidence,
        positives=n,
        misses=misses,
        miss_rate_upper_bound=float(upper_bound(misses, n, confidence)),
        false_alarm_rate=float((negatives >= threshold).mean()) if negatives.size else math.nan,
        negatives=int(negatives.size),
    )


def measure(point: OperatingPoint, positive_scores: np.ndarray, negative_scores: np.ndarray) -> dict[str, float]:
    """Miss rate (with its two-sided 95% interval) and false-alarm rate of a threshold on another split."""
    misses = int((np.asarray(positive_scores) < point.threshold).sum())
    n = int(np.asarray(positive_scores).size)
    low, high = clopper_pearson(misses, n, point.confidence)
    negatives = np.asarray(negative_scores)
    return {
        "positives": n,
        "miss_rate": misses / n if n else math.nan,
        "miss_rate_ci_low": low,
        "miss_rate_ci_high": high,
        "false_alarm_rate": float((negatives >= point.threshold).mean()) if negatives.size else math.nan,
    }
