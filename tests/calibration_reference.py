"""An independent NumPy reference for applying a fitted calibration, kept only in tests.

The shipped implementation is calibration/modules.py (torch, traced into the bundle). This one is
written from the definitions, in float64 NumPy and SciPy, with the age heads' distributions
re-derived rather than called, so a mistake in either shows up as a disagreement
(tests/unit/test_calibration_reference.py).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, softmax
from scipy.stats import norm

from calibration.age import AgeCalibration
from calibration.content import ContentCalibration


def content_reference(calibration: ContentCalibration, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(calibrated probabilities, unsafe score) for each row of logits."""
    logits = np.asarray(logits, dtype=np.float64)
    if calibration.method == "vector":
        scaled = logits * np.asarray(calibration.vector_weight) + np.asarray(calibration.vector_bias)
    else:
        scaled = logits / calibration.temperature
    probabilities = softmax(scaled, axis=1)
    unsafe = probabilities[:, [c in calibration.unsafe_classes for c in calibration.classes]].sum(axis=1)
    if calibration.method == "isotonic":
        unsafe = np.interp(unsafe, calibration.isotonic_x, calibration.isotonic_y)
    return probabilities, unsafe


def _bin_probabilities(kind: str, logits: np.ndarray) -> np.ndarray:
    if kind == "dldl":
        return softmax(logits, axis=1)
    survival = np.cumprod(expit(logits), axis=1)  # CORN: P(age > k) = prod_{j <= k} P(age > j | age > j - 1)
    return np.concatenate([np.ones((len(logits), 1)), survival], 1) - np.concatenate(
        [survival, np.zeros((len(logits), 1))], 1
    )


def _tempered(kind: str, raw: np.ndarray, temperature: float) -> np.ndarray:
    if kind == "regression":  # a Gaussian whose standard deviation scales by the temperature
        return np.stack([raw[:, 0], raw[:, 1] + 2 * np.log(temperature)], axis=1)
    return raw / temperature


def _moments(kind: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the predicted age distribution."""
    if kind == "regression":
        return raw[:, 0], np.exp(0.5 * raw[:, 1])
    probabilities = _bin_probabilities(kind, raw)
    centres = np.arange(probabilities.shape[1]) + 0.5
    mean = probabilities @ centres
    variance = (probabilities * (centres[None, :] - mean[:, None]) ** 2).sum(axis=1) + 1 / 12
    return mean, np.sqrt(variance)


def _below(kind: str, raw: np.ndarray, gates: np.ndarray) -> np.ndarray:
    if kind == "regression":
        mean, sd = _moments(kind, raw)
        return norm.cdf((gates[None, :] - mean[:, None]) / sd[:, None])
    probabilities = _bin_probabilities(kind, raw)
    share = np.clip(gates[:, None] - np.arange(probabilities.shape[1])[None, :], 0.0, 1.0)  # uniform inside a bin
    return np.clip(probabilities @ share.T, 0.0, 1.0)


def age_reference(
    kind: str,
    calibration: AgeCalibration,
    raw: np.ndarray,
    coverage: float | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """prob_below per gate, and the conformal interval at `coverage` (per-group quantiles when `groups`)."""
    raw = np.asarray(raw, dtype=np.float64)
    gates = np.array([g.gate for g in calibration.gates])
    tempered = _tempered(kind, raw, calibration.temperature)
    calibrated, own = _below(kind, tempered, gates), _below(kind, raw, gates)
    columns = [
        np.interp(own[:, i], g.isotonic_x, g.isotonic_y) if g.method == "isotonic" else calibrated[:, i]
        for i, g in enumerate(calibration.gates)
    ]
    values = {"prob_below": np.maximum.accumulate(np.stack(columns, axis=1), axis=1)}
    if coverage is None:
        return values
    intervals = next(i for i in calibration.intervals if np.isclose(i.coverage, coverage))
    factor = (
        np.full(len(raw), intervals.quantile)
        if groups is None
        else np.array([intervals.group_quantiles.get(g, intervals.quantile) for g in groups])
    )
    expected, spread = _moments(kind, raw)[0], _moments(kind, tempered)[1]
    half = factor * spread
    values["interval_low"] = np.clip(expected - half, 0.0, calibration.max_age)
    values["interval_high"] = np.clip(expected + half, 0.0, calibration.max_age)
    return values
