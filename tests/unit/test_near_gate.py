"""Per-year certificates and rates just below an age gate, where pooled rates hide a gate's failures."""

import numpy as np
import pytest

from calibration.fit import Scores, certify_near_gate, near_gate_rates, near_gate_years
from calibration.operating_points import certify_threshold
from core.errors import WorkbenchError


def _minors(people_per_year: int, seed: int = 0) -> tuple[Scores, np.ndarray]:
    """Minors aged 0-12, 3 images each; twelve-year-olds score lowest, so the pooled threshold lets them through."""
    rng = np.random.default_rng(seed)
    ages = np.repeat(np.arange(13) + 0.5, people_per_year * 3)
    units = np.repeat(np.arange(13 * people_per_year), 3).astype(str)
    scores = np.clip(rng.normal(np.where(ages > 12, 0.55, 0.9), 0.08), 0, 1)
    negatives = rng.uniform(0, 0.5, 600)
    scores_all = np.concatenate([scores, negatives])
    is_minor = np.arange(scores_all.size) < scores.size
    units_all = np.concatenate([units, [f"adult{i}" for i in range(negatives.size)]])
    return Scores.of(scores_all, is_minor, units_all, "subjects", "age"), ages


def test_the_years_just_below_a_gate():
    assert near_gate_years(13.0, 3) == [10, 11, 12] and near_gate_years(18.0, 4) == [14, 15, 16, 17]
    assert near_gate_years(2.0, 3) == [0, 1]


def test_a_per_year_target_lowers_the_gate_threshold_until_that_year_is_certified_too():
    calib, ages = _minors(people_per_year=80)
    pooled = certify_threshold("gate13", calib.positive, calib.negative, 0.05, 0.95, calib.positive_units, "subjects")
    twelve = np.floor(ages) == 12
    assert (calib.positive[twelve] < pooled.threshold).mean() > 0.1  # the pooled point lets many 12-year-olds pass
    point = certify_near_gate(pooled, calib, ages, [12], max_pass_rate=0.05)
    assert point.threshold < pooled.threshold
    [record] = point.near_gate
    assert record["age"] == 12 and record["calib_units"] == 80
    assert record["pass_rate_upper_bound"] <= 0.05
    assert point.miss_rate_upper_bound <= pooled.miss_rate_upper_bound  # the pooled guarantee only tightens


def test_a_year_with_too_few_people_is_refused_with_the_number_it_needs():
    calib, ages = _minors(people_per_year=40)
    pooled = certify_threshold("gate13", calib.positive, calib.negative, 0.05, 0.95, calib.positive_units, "subjects")
    with pytest.raises(WorkbenchError, match=r"'gate13_age12'.*has 40 positive subjects.*at least 59 subjects"):
        certify_near_gate(pooled, calib, ages, [12], max_pass_rate=0.05)


def test_near_gate_rates_are_per_person_and_null_with_a_reason_where_nobody_is_that_age():
    calib, ages = _minors(people_per_year=10)
    rates = near_gate_rates(calib, ages, 0.7, [12, 13], 0.95)
    twelve = np.floor(ages) == 12
    per_person = (calib.positive[twelve] < 0.7).reshape(10, 3).any(axis=1).mean()
    assert rates[0]["rate"] == pytest.approx(per_person) and rates[0]["units"] == 10
    assert rates[0]["ci_low"] <= rates[0]["rate"] <= rates[0]["ci_high"]
    assert rates[1]["rate"] is None and rates[1]["reason"] == "no subjects aged 13"
