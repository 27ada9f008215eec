import json

import numpy as np
import pytest
import torch
from scipy.special import softmax

from calibration.age import AgeCalibration, ConformalIntervals, conformal_quantile
from calibration.content import ContentCalibration
from calibration.metrics import multiclass_scores
from calibration.modules import AgeCalibrator, ContentCalibrator
from calibration.state import CalibrationState
from core.errors import WorkbenchError
from models.age_heads import build_age_head

CLASSES = ["safe", "suggestive", "explicit"]


def calibrated_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true class distribution, and labels drawn from it."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 3))
    probs = softmax(logits, axis=1)
    labels = (probs.cumsum(1) > rng.uniform(size=(n, 1))).argmax(1)
    return logits, labels


def test_temperature_halves_the_ece_of_an_overconfident_model_and_keeps_argmax():
    calib_logits, calib_labels = calibrated_logits(3000, 0)
    test_logits, test_labels = calibrated_logits(3000, 1)
    overconfident = 4.0  # the same model with its logits scaled up
    state = ContentCalibration.fit("temperature", calib_logits * overconfident, calib_labels, CLASSES, ["explicit"])
    assert state.temperature == pytest.approx(overconfident, rel=0.15)
    before = multiclass_scores(softmax(test_logits * overconfident, axis=1), test_labels)
    after_probs = ContentCalibrator(state).apply(test_logits * overconfident)[0]
    after = multiclass_scores(after_probs, test_labels)
    assert after["ece"] <= 0.5 * before["ece"]
    assert np.array_equal(after_probs.argmax(1), (test_logits * overconfident).argmax(1))
    assert after["accuracy"] == before["accuracy"]


@pytest.mark.parametrize("method", ["temperature", "vector", "isotonic"])
def test_calibrators_round_trip_through_json(method):
    logits, labels = calibrated_logits(800, 2)
    state = CalibrationState(
        task="content",
        train_run_id="abc",
        checkpoint="x.ckpt",
        confidence=0.95,
        content=ContentCalibration.fit(method, logits * 3, labels, CLASSES, ["suggestive", "explicit"]),
    )
    restored = CalibrationState.from_json(state.to_json())
    assert restored == state
    assert np.array_equal(
        ContentCalibrator(restored.content).apply(logits)[1], ContentCalibrator(state.content).apply(logits)[1]
    )
    assert json.loads(state.to_json())["content"]["method"] == method


def test_isotonic_unsafe_score_is_monotone_and_bounded():
    logits, labels = calibrated_logits(2000, 3)
    state = ContentCalibration.fit("isotonic", logits * 3, labels, CLASSES, ["explicit"])
    grid = np.linspace(0, 1, 101)
    mapped = np.interp(grid, state.isotonic_x, state.isotonic_y)
    assert np.all(np.diff(mapped) >= 0) and mapped.min() >= 0 and mapped.max() <= 1


def test_unknown_content_method_and_unsafe_class_are_named():
    logits, labels = calibrated_logits(100, 4)
    with pytest.raises(WorkbenchError, match=r"calibration\.content\.method=.platt."):
        ContentCalibration.fit("platt", logits, labels, CLASSES, ["explicit"])
    with pytest.raises(WorkbenchError, match="nudity"):
        ContentCalibration.fit("temperature", logits, labels, CLASSES, ["nudity"])


def test_conformal_quantile_uses_the_finite_sample_rank():
    scores = np.arange(1, 20, dtype=float)  # n = 19: rank ceil(20 * 0.9) = 18
    assert conformal_quantile(scores, 0.9) == 18.0
    assert conformal_quantile(np.arange(5.0), 0.9) == np.inf  # n too small for any guarantee


def _regression_outputs(n: int, seed: int, group_noise: dict[str, float]):
    """A regression head's raw outputs for ages with known Gaussian errors, larger in some groups."""
    rng = np.random.default_rng(seed)
    groups = rng.choice(sorted(group_noise), n)
    age = rng.uniform(0, 80, n)
    sigma = np.array([group_noise[g] for g in groups]) * (1 + 0.05 * age)
    predicted = age + sigma * rng.standard_normal(n)
    raw = torch.tensor(np.stack([predicted, np.log((1 + 0.05 * age) ** 2)], 1), dtype=torch.float32)
    return raw, predicted, age, groups


@pytest.mark.parametrize("mondrian", [False, True])
def test_conformal_intervals_reach_their_coverage_on_known_data(mondrian):
    head = build_age_head("regression", 4, 100)
    noise = {"a": 1.0, "b": 3.0}
    raw, predicted, age, groups = _regression_outputs(4000, 0, noise)
    state = AgeCalibration.fit(
        head, raw, predicted, age, [13, 16, 18], [0.9], groups if mondrian else None, ["group"] if mondrian else [], 100
    )
    t_raw, _, t_age, t_groups = _regression_outputs(20000, 1, noise)
    quantile = state.intervals[0].row_quantiles(t_groups) if mondrian else None
    interval = AgeCalibrator(state, 0.9).apply(head, t_raw, quantile)
    low, high = interval["interval_low"], interval["interval_high"]
    inside = (t_age >= low) & (t_age <= high)
    assert 0.88 <= inside.mean() <= 0.93
    if mondrian:  # each group gets its own guarantee, even the noisy one
        for g in noise:
            assert inside[t_groups == g].mean() >= 0.87
    else:  # pooled intervals under-cover the noisy group: what Mondrian is for
        assert inside[t_groups == "b"].mean() < 0.85


def test_age_calibration_round_trips_and_prob_below_stays_monotone():
    head = build_age_head("dldl", 4, 100)
    torch.manual_seed(0)
    raw = head(torch.randn(600, 4) * 2)
    age = head.expected_age(raw).detach().numpy() + np.random.default_rng(0).normal(0, 3, 600)
    state = AgeCalibration.fit(
        head, raw.detach(), head.expected_age(raw).detach().numpy(), age, [13, 16, 18], [0.8, 0.9], None, [], 100
    )
    wrapped = CalibrationState(task="age", train_run_id=None, checkpoint="x", confidence=0.95, age=state)
    restored = CalibrationState.from_json(wrapped.to_json()).age
    probs = AgeCalibrator(restored, 0.9).apply(head, raw)["prob_below"]
    assert np.array_equal(probs, AgeCalibrator(state, 0.9).apply(head, raw)["prob_below"])
    assert probs.min() >= 0 and probs.max() <= 1
    assert np.all(np.diff(probs, axis=1) >= 0)  # P(age < 13) <= P(age < 16) <= P(age < 18)
    assert {g.method for g in state.gates} <= {"temperature", "isotonic"}


def test_isotonic_knots_are_thinned_so_the_map_has_a_bounded_slope():
    from calibration.isotonic import MIN_SPACING, fit_isotonic

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 5000)
    y = rng.uniform(0, 1, 5000) < x
    knots_x, knots_y = fit_isotonic(x, y)
    assert np.all(np.diff(knots_x) >= MIN_SPACING - 1e-12)
    assert np.all(np.diff(knots_y) >= 0)
    assert np.max(np.diff(knots_y) / np.diff(knots_x)) <= 1 / MIN_SPACING
    assert np.abs(np.interp(x, knots_x, knots_y) - x).mean() < 0.05  # still calibrates


def test_asking_for_an_interval_coverage_calibrate_did_not_fit_names_the_ones_it_did():
    from calibration.age import AgeCalibration, ConformalIntervals
    from core.errors import WorkbenchError

    intervals = [ConformalIntervals(coverage=0.9, quantile=1.5, calib_size=10)]
    calibration = AgeCalibration(temperature=1.0, gates=[], intervals=intervals, calib_size=10, max_age=80.0)
    assert calibration.intervals_at(0.9) is intervals[0]
    with pytest.raises(WorkbenchError, match=r"coverage 0.8: the calibration state has \[0.9\]"):
        calibration.intervals_at(0.8)


def test_the_interval_coverage_is_set_once_by_calibrate():
    """Evaluate and export use the coverage calibrate fitted, unless told otherwise; several need a choice."""

    def state(*coverages: float) -> CalibrationState:
        intervals = [ConformalIntervals(coverage=c, quantile=1.5, calib_size=10) for c in coverages]
        return CalibrationState("age", None, "", 0.95, age=AgeCalibration(1.0, [], intervals, 0, 100.0))

    assert state(0.8).interval_coverage(None) == 0.8
    assert state(0.8, 0.9).interval_coverage(0.9) == 0.9
    with pytest.raises(WorkbenchError, match=r"coverages \[0.8, 0.9\]; name the one to use"):
        state(0.8, 0.9).interval_coverage(None)
    assert state().interval_coverage(None) == 0.9  # no intervals: their figures are named, and not measurable
