"""Isotonic calibration maps as a few knots, with a bounded slope.

scikit-learn's isotonic fit is a step function: its knots come in pairs that can sit 1e-6 apart,
so the interpolated map has near-vertical jumps, and any rounding difference in its input (fp32
ONNX against fp32 PyTorch, ~1e-7) is amplified past the export parity tolerance. Knots closer
than MIN_SPACING are thinned, which turns each jump into a ramp at most 100 units steep.
"""

from __future__ import annotations

import numpy as np
from sklearn.isotonic import IsotonicRegression

MIN_SPACING = 0.01


def fit_isotonic(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """Monotone map from x to P(y), returned as (knots_x, knots_y) for np.interp."""
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, y)
    xs = iso.X_thresholds_
    kept = [0]
    for i in range(1, len(xs)):
        if xs[i] - xs[kept[-1]] >= MIN_SPACING or i == len(xs) - 1:
            kept.append(i)
    if len(kept) > 1 and xs[kept[-1]] - xs[kept[-2]] < MIN_SPACING:
        kept.pop(-2)  # the last knot is kept; drop its too-close predecessor instead
    knots = xs[kept]
    return knots.tolist(), np.interp(knots, xs, iso.y_thresholds_).tolist()
