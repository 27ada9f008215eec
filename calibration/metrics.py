"""Calibration scores in one place for every stage: NLL and Brier from scikit-learn, ECE binned here.

ECE binning, stated once (the report and docs/metrics.md repeat it): 15 equal-width bins on [0, 1];
a bin is closed on the left and open on the right, [k/15, (k+1)/15), except the last, which also
holds 1.0. Scores and edges are both rounded to float32 and then compared in float64, so a score
on an edge falls in the same bin whether the float64 reference or the float32 exported graph
computed it (isotonic outputs often sit exactly on an edge). ECE = sum over bins of
(bin share of samples) x |mean confidence - observed frequency|. Multiclass ECE is top-label:
confidence is the largest probability, the outcome whether that class is the label. Binary ECE
uses P(positive) and the positive indicator.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import brier_score_loss, log_loss

ECE_BINS = 15
ECE_BINNING = (
    f"ECE: {ECE_BINS} equal-width bins on [0, 1], each [k/{ECE_BINS}, (k+1)/{ECE_BINS}) with 1.0 in the last; "
    "scores and edges rounded to float32 before binning; multiclass ECE is top-label."
)
UNCALIBRATED = "_uncalibrated"


def score_name(name: str, calibrated: bool) -> str:
    """`ece` for calibrated probabilities, `ece_uncalibrated` for raw ones: they never share a metric name."""
    return name if calibrated else f"{name}{UNCALIBRATED}"


def ece_bins(scores: np.ndarray) -> np.ndarray:
    """Bin index 0..ECE_BINS-1 of each score, by the rule in the module docstring."""
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1).astype(np.float32).astype(np.float64)
    rounded = np.asarray(scores).astype(np.float32).astype(np.float64)
    return np.clip(np.digitize(rounded, edges[1:-1], right=False), 0, ECE_BINS - 1)


def expected_calibration_error(confidence: np.ndarray, outcome: np.ndarray) -> float:
    """L1 ECE of `confidence` against the 0/1 `outcome`, binned by `ece_bins`."""
    confidence, outcome = np.asarray(confidence, dtype=np.float64), np.asarray(outcome, dtype=np.float64)
    bins = ece_bins(confidence)
    counts = np.bincount(bins, minlength=ECE_BINS)
    gap = np.bincount(bins, weights=confidence - outcome, minlength=ECE_BINS)
    return float(np.abs(gap).sum() / counts.sum())


def multiclass_scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    # The graph's float32 softmax sums to 1 within ~1e-7; scikit-learn wants it exact.
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    k = probs.shape[1]
    predicted = probs.argmax(axis=1)
    return {
        "nll": float(log_loss(labels, probs, labels=list(range(k)))),
        "ece": expected_calibration_error(probs.max(axis=1), predicted == labels),
        "brier": float(brier_score_loss(labels, probs, labels=list(range(k)))),
        "accuracy": float((predicted == labels).mean()),
    }


def binary_scores(probs: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    return {"ece": expected_calibration_error(probs, positive), "brier": float(np.mean((probs - positive) ** 2))}
