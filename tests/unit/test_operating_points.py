import itertools

import numpy as np
import pytest
from scipy.stats import beta

from calibration.operating_points import (
    certify_threshold,
    clopper_pearson,
    measure,
    required_sample_size,
    upper_bound,
)
from tracking.errors import WorkbenchError


def brute_force_threshold(positives: np.ndarray, max_miss: float, confidence: float) -> float:
    """Try every candidate threshold; keep the largest whose exact upper bound meets the target."""
    n = positives.size
    best = -np.inf
    for t in np.concatenate([positives, [np.nextafter(positives.max(), np.inf)]]):
        misses = int((positives < t).sum())
        ub = 1.0 if misses == n else beta.ppf(confidence, misses + 1, n - misses)
        if ub <= max_miss:
            best = max(best, t)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    positives = rng.beta(5, 2, size=700)
    point = certify_threshold("t", positives, rng.beta(2, 5, size=300), max_miss_rate=0.02, confidence=0.95)
    assert point.threshold == brute_force_threshold(positives, 0.02, 0.95)
    assert point.miss_rate_upper_bound <= 0.02
    assert point.misses == int((positives < point.threshold).sum())


def test_upper_bound_is_the_exact_clopper_pearson_bound():
    for k, n in itertools.product([0, 1, 5], [50, 300]):
        assert upper_bound(k, n, 0.95) == pytest.approx(beta.ppf(0.95, k + 1, n - k))
    assert upper_bound(0, 299, 0.95) <= 0.01 < upper_bound(0, 298, 0.95)  # rule of three: about 3/n


def test_too_small_a_calib_set_is_refused_with_the_size_needed():
    assert required_sample_size(0.01, 0.95) == 299
    with pytest.raises(WorkbenchError, match=r"has 100 positives.*at least 299"):
        certify_threshold("gate18", np.linspace(0.1, 1, 100), np.zeros(10), max_miss_rate=0.01, confidence=0.95)


def test_thresholds_hold_their_target_on_fresh_data():
    """Across repeated calib/test draws the certified miss rate holds on test far more often than not."""
    rng = np.random.default_rng(0)
    held = 0
    for _ in range(200):
        calib, test = rng.normal(1.0, 1.0, 2000), rng.normal(1.0, 1.0, 20000)
        point = certify_threshold("t", calib, rng.normal(-1, 1, 100), max_miss_rate=0.05, confidence=0.95)
        held += measure(point, test, np.array([]))["miss_rate"] <= 0.05
    assert held >= 190  # the guarantee is at 95% confidence


def test_two_sided_interval_matches_reference_values():
    low, high = clopper_pearson(3, 100)
    assert low == pytest.approx(0.0062, abs=1e-4) and high == pytest.approx(0.0852, abs=1e-4)
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0
