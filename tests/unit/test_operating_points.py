import itertools
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import beta

from calibration.operating_points import (
    THRESHOLD_MARGIN,
    OperatingPoint,
    certify_threshold,
    clopper_pearson,
    is_degenerate,
    measure,
    recount,
    required_sample_size,
    unit_rate,
    upper_bound,
)
from core.errors import WorkbenchError


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
    best = brute_force_threshold(positives, 0.02, 0.95)
    # The same misses as the best threshold, placed a float32 margin below the lowest caught score.
    assert point.misses == int((positives < best).sum()) == int((positives < point.threshold).sum())
    assert best - THRESHOLD_MARGIN - 1e-7 <= point.threshold < best
    assert np.float32(point.threshold) == point.threshold
    assert point.miss_rate_upper_bound <= 0.02


def test_float32_noise_in_the_shipped_graph_does_not_change_the_counted_misses():
    """The graph recomputes every score in float32, a little off the float64 one: the recount must not move."""
    rng = np.random.default_rng(1)
    positives = rng.beta(5, 2, size=2000)
    point = certify_threshold("t", positives, np.zeros(10), max_miss_rate=0.01, confidence=0.95)
    noisy = (positives + rng.uniform(-1e-6, 1e-6, positives.size)).astype(np.float32)
    assert recount(point, noisy, None) == point.misses
    # At the old rule (threshold = the lowest caught score itself) that noise would miss more than were counted.
    lowest_caught = np.sort(positives)[point.misses]
    assert int((noisy < np.float32(lowest_caught)).sum()) >= point.misses


def test_per_person_certificates_count_a_person_missed_when_any_image_is():
    scores = np.array([0.9, 0.1, 0.8, 0.85, 0.95, 0.7])
    units = np.array(["a", "a", "b", "b", "c", "c"])
    point = certify_threshold("t", scores, np.zeros(3), max_miss_rate=0.99, confidence=0.5, positive_units=units)
    assert (point.positives, point.positive_images, point.unit) == (3, 6, "images")  # unit names come from callers
    named = certify_threshold("t", scores, np.zeros(3), 0.99, 0.5, positive_units=units, unit="subjects")
    assert named.unit == "subjects"
    assert recount(replace_threshold(named, 0.5), scores, units) == 1  # only a's 0.1 is below 0.5
    assert unit_rate(scores < 0.5, units, 0.95)["rate"] == pytest.approx(1 / 3)
    assert unit_rate(scores < 0.5, None, 0.95)["rate"] == pytest.approx(1 / 6)


def replace_threshold(point: OperatingPoint, threshold: float) -> OperatingPoint:
    return replace(point, threshold=threshold)


def test_too_few_people_is_refused_with_the_number_of_people_needed():
    scores = np.linspace(0.5, 1, 600)  # 600 images but only 200 subjects
    units = np.repeat(np.arange(200), 3)
    with pytest.raises(WorkbenchError, match=r"has 200 positive subjects.*at least 299 subjects"):
        certify_threshold("gate13", scores, np.zeros(5), 0.01, 0.95, positive_units=units, unit="subjects")


def test_a_point_that_flags_most_negatives_is_degenerate():
    point = certify_threshold("t", np.linspace(0.5, 1, 400), np.linspace(0, 1, 100), 0.05, 0.95)
    assert point.false_alarm_rate == pytest.approx(0.5, abs=0.02)
    assert is_degenerate(point, 0.3) and not is_degenerate(point, 0.6)
    measured = measure(point, np.linspace(0.5, 1, 400), np.linspace(0.6, 1, 50), base_rate=0.01)
    assert measured["false_alarm_rate"] == 1.0
    assert measured["false_alarm_rate_ci_low"] <= 1.0 <= measured["false_alarm_rate_ci_high"]
    assert measured["precision_at_base_rate"] == pytest.approx(0.95 * 0.01 / (0.95 * 0.01 + 0.99), rel=0.05)


def test_upper_bound_is_the_exact_clopper_pearson_bound():
    for k, n in itertools.product([0, 1, 5], [50, 300]):
        assert upper_bound(k, n, 0.95) == pytest.approx(beta.ppf(0.95, k + 1, n - k))
    assert upper_bound(0, 299, 0.95) <= 0.01 < upper_bound(0, 298, 0.95)  # rule of three: about 3/n


def test_too_small_a_calib_set_is_refused_with_the_size_needed():
    assert required_sample_size(0.01, 0.95) == 299
    with pytest.raises(WorkbenchError, match=r"has 100 positive images.*at least 299"):
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
