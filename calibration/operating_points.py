"""Thresholds that meet a target rate with a one-sided Clopper-Pearson guarantee, per person.

One rule serves both tasks. Positives are the cases the filter must catch (true minors at a gate,
or unsafe frames); a positive is *missed* when its score falls below the threshold. We choose the
largest threshold (the fewest false alarms) whose upper confidence bound on the miss rate is at
most the target:
- age gate T: score = P(age < T); a minor "passes" the gate when missed; target = max pass rate;
- content: score = P(explicit) or the unsafe score; target = 1 - required recall.

The unit is the person (age: `subject_id`) or the scene (content), never the image: a unit counts
as missed when any of its positive images is missed, so the bound stays valid however strongly a
person's images are correlated (docs/certification.md). Thresholds are float32 numbers placed a
margin below the lowest caught score, so the exported graph's own float32 scores give the counted
misses; export recounts them with onnxruntime and refuses on any difference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import beta

from core.errors import WorkbenchError

# How far below the lowest caught calib score a threshold sits: the parity gate's probability
# tolerance, so any score the shipped graph computes within that tolerance is still caught.
THRESHOLD_MARGIN = 1e-4
COMPARISON = "float32: decision = float32(score) >= float32(threshold), as the exported graph computes it"


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


def row_units(rows: pd.DataFrame) -> np.ndarray:
    """The person or scene of each manifest row: the unit every certificate counts (an image without one is its own)."""
    units = rows["subject_id"]
    return (units.fillna(rows["id"]) if units.isna().any() else units).astype(str).to_numpy()


def per_unit(values: np.ndarray, units: np.ndarray | None, how: str) -> np.ndarray:
    """`how` ("min" or "max") of `values` within each unit; the values themselves without units."""
    values = np.asarray(values, dtype=np.float64)
    if units is None:
        return values
    return pd.Series(values).groupby(np.asarray(units), sort=False).agg(how).to_numpy()


def unit_rate(hits: np.ndarray, units: np.ndarray | None, confidence: float) -> dict:
    """Share of units with any hit, with its exact two-sided interval over units.

    A unit is one person or scene; with `units=None` every image is its own unit.
    """
    hits = np.asarray(hits, dtype=bool)
    per = per_unit(hits, units, "max").astype(bool)
    n, k = int(per.size), int(per.sum())
    if n == 0:
        return {"rate": None, "ci_low": None, "ci_high": None, "units": 0, "images": 0, "hits": 0, "reason": "no units"}
    low, high = clopper_pearson(k, n, confidence)
    return {"rate": k / n, "ci_low": low, "ci_high": high, "units": n, "images": int(hits.size), "hits": k}


def float32_threshold(caught: float, missed: float | None) -> float:
    """A float32 threshold a margin below `caught`, the lowest score to be caught, and above `missed`."""
    margin = THRESHOLD_MARGIN if missed is None else min(THRESHOLD_MARGIN, (caught - missed) / 2)
    threshold = np.float32(caught - margin)
    if threshold > caught - margin:  # rounding went up: step to the float32 below
        threshold = np.nextafter(threshold, np.float32(-np.inf))
    return float(threshold)


def precision_at(recall: float, false_alarm_rate: float, base_rate: float) -> float | None:
    """Share of flags that are true positives when positives make up `base_rate` of the traffic."""
    flagged = recall * base_rate + false_alarm_rate * (1 - base_rate)
    return recall * base_rate / flagged if flagged > 0 else None


@dataclass(frozen=True)
class OperatingPoint:
    name: str
    threshold: float  # a float32 value; the graph compares in float32 (COMPARISON)
    target_max_miss_rate: float
    confidence: float
    positives: int  # calib units (people or scenes) with at least one positive image
    misses: int  # of those, units with at least one positive image below the threshold
    miss_rate_upper_bound: float
    false_alarm_rate: float | None  # calib negative images flagged; None without negatives
    negatives: int
    test: dict = field(default_factory=dict)  # the same rates measured on the test split
    # What the threshold protects, set once by calibrate and read by export, parity and evaluation:
    # a content class whose recall is certified, "unsafe" (any unsafe class), or "minor" below `gate`.
    target: str = ""
    gate: float | None = None
    unit: str = "images"  # what `positives` and `misses` count: subjects, scenes or images
    positive_images: int = 0
    labels: str = "label"  # the manifest column the guarantee refers to
    degenerate: bool = False  # flags more negatives than calibration.max_false_alarm_rate allows
    near_gate: list[dict] = field(default_factory=list)  # per-year certificates below the gate (age)

    def to_dict(self) -> dict:
        return asdict(self)


def certify_threshold(
    name: str,
    positive_scores: np.ndarray,
    negative_scores: np.ndarray,
    max_miss_rate: float,
    confidence: float,
    positive_units: np.ndarray | None = None,
    unit: str = "images",
) -> OperatingPoint:
    """Largest float32 threshold t with UB(#units with a positive < t / #units) <= max_miss_rate.

    `unit` names what `positive_units` holds ("subjects", "scenes"), for the contract and messages.
    """
    scores = np.sort(per_unit(positive_scores, positive_units, "min"))
    n = scores.size
    unit = unit if positive_units is not None else "images"
    needed = required_sample_size(max_miss_rate, confidence)
    if n < needed:
        raise WorkbenchError(
            f"Operating point '{name}': the calib split has {n} positive {unit}, too few to certify a miss rate "
            f"of at most {max_miss_rate:g} at confidence {confidence:g}. Even with zero misses that needs at least "
            f"{needed} {unit} (rule of three: 3/n). Enlarge the calib split or relax the target."
        )
    bounds = upper_bound(np.arange(n + 1), n, confidence)
    allowed = int(np.flatnonzero(bounds <= max_miss_rate).max())  # missed units we may afford
    if allowed < n:
        threshold = float32_threshold(scores[allowed], scores[allowed - 1] if allowed else None)
    else:
        threshold = float(np.nextafter(np.float32(scores[-1]), np.float32(np.inf)))
    return at_threshold(
        name, threshold, positive_scores, negative_scores, max_miss_rate, confidence, positive_units, unit
    )


def at_threshold(
    name: str,
    threshold: float,
    positive_scores: np.ndarray,
    negative_scores: np.ndarray,
    max_miss_rate: float,
    confidence: float,
    positive_units: np.ndarray | None,
    unit: str,
) -> OperatingPoint:
    """The certificate a given threshold earns on calib: missed units, their upper bound, false alarms."""
    lowest = per_unit(positive_scores, positive_units, "min")
    misses = int((lowest < threshold).sum())  # ties at the threshold are flagged, never missed
    negatives = np.asarray(negative_scores, dtype=np.float64)
    return OperatingPoint(
        name=name,
        threshold=threshold,
        target_max_miss_rate=max_miss_rate,
        confidence=confidence,
        positives=int(lowest.size),
        misses=misses,
        miss_rate_upper_bound=float(upper_bound(misses, lowest.size, confidence)),
        false_alarm_rate=float((negatives >= threshold).mean()) if negatives.size else None,
        negatives=int(negatives.size),
        unit=unit if positive_units is not None else "images",
        positive_images=int(np.asarray(positive_scores).size),
    )


def recount(point: OperatingPoint, positive_scores: np.ndarray, positive_units: np.ndarray | None) -> int:
    """Units missed at the point's threshold, as `certify_threshold` counts them (export's float32 recount)."""
    lowest = per_unit(np.asarray(positive_scores, dtype=np.float32), positive_units, "min")
    return int((lowest < np.float32(point.threshold)).sum())


def false_alarm_interval(flags: np.ndarray, units: np.ndarray | None) -> tuple[float | None, float | None]:
    """95% interval on the share of negative images flagged, resampling whole units."""
    from evaluation.stats import subject_rate  # evaluation builds on this module, not the reverse

    flags = np.asarray(flags, dtype=np.float64)
    estimate = subject_rate(flags, np.arange(flags.size) if units is None else np.asarray(units), "negatives")
    return estimate.low, estimate.high


def measure(
    point: OperatingPoint,
    positive_scores: np.ndarray,
    negative_scores: np.ndarray,
    positive_units: np.ndarray | None = None,
    negative_units: np.ndarray | None = None,
    base_rate: float | None = None,
) -> dict:
    """The point's rates on another split: per-unit miss rate (exact interval), false alarms, precision."""
    positive_scores, negative_scores = np.asarray(positive_scores), np.asarray(negative_scores)
    missed = positive_scores < point.threshold
    miss = unit_rate(missed, positive_units, point.confidence)
    flagged = negative_scores >= point.threshold
    low, high = false_alarm_interval(flagged, negative_units) if flagged.size else (None, None)
    false_alarm = float(flagged.mean()) if flagged.size else None
    image_recall = float(1 - missed.mean()) if missed.size else None
    precision = (
        precision_at(image_recall, false_alarm, base_rate)
        if base_rate is not None and image_recall is not None and false_alarm is not None
        else None
    )
    return {
        "unit": point.unit,
        "positives": miss["units"],
        "positive_images": int(positive_scores.size),
        "miss_rate": miss["rate"],
        "miss_rate_ci_low": miss["ci_low"],
        "miss_rate_ci_high": miss["ci_high"],
        "image_miss_rate": float(missed.mean()) if missed.size else None,
        "false_alarm_rate": false_alarm,
        "false_alarm_rate_ci_low": low,
        "false_alarm_rate_ci_high": high,
        "negative_images": int(negative_scores.size),
        "base_rate": base_rate,
        "precision_at_base_rate": precision,
    }


def is_degenerate(point: OperatingPoint, ceiling: float) -> bool:
    """A point that flags more than `ceiling` of the negatives on calib or test buys its recall by flagging all."""
    rates = [point.false_alarm_rate, point.test.get("false_alarm_rate")]
    return any(rate is not None and math.isfinite(rate) and rate > ceiling for rate in rates)
