"""The shipped calibration modules agree with the independent NumPy reference on random inputs."""

import numpy as np
import pytest
import torch

from calibration.age import AgeCalibration, ConformalIntervals, GateCalibration
from calibration.content import ContentCalibration
from calibration.modules import AgeCalibrator, ContentCalibrator
from models.age_heads import build_age_head
from tests.calibration_reference import age_reference, content_reference

SEEDS = range(5)
MAX_AGE = 90
TOLERANCE = 2e-5  # float32 graph arithmetic against float64 NumPy


def random_knots(rng: np.random.Generator) -> tuple[list[float], list[float]]:
    """A monotone map on part of [0, 1], so inputs outside its knots exercise the clipping."""
    x = np.sort(rng.uniform(0.05, 0.95, rng.integers(2, 8)))
    x = x[np.concatenate([[True], np.diff(x) > 1e-3])]
    y = np.sort(rng.uniform(0, 1, x.size))
    return x.tolist(), y.tolist()


def random_content(method: str, rng: np.random.Generator) -> ContentCalibration:
    classes = ["safe", "suggestive", "explicit", "other"][: rng.integers(2, 5)]
    unsafe = [c for c in classes[1:] if rng.uniform() < 0.6] or [classes[-1]]
    state = ContentCalibration(method, classes, unsafe, temperature=float(rng.uniform(0.3, 4.0)))
    if method == "vector":
        state.vector_weight = rng.uniform(0.2, 2.0, len(classes)).tolist()
        state.vector_bias = rng.normal(0, 1, len(classes)).tolist()
    if method == "isotonic":
        state.isotonic_x, state.isotonic_y = random_knots(rng)
    return state


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", ["temperature", "vector", "isotonic"])
def test_content_calibrator_matches_the_reference(method, seed):
    rng = np.random.default_rng(seed)
    state = random_content(method, rng)
    logits = rng.normal(0, 3, (500, len(state.classes))).astype(np.float32)
    probabilities, unsafe = ContentCalibrator(state).apply(logits)
    expected_probabilities, expected_unsafe = content_reference(state, logits)
    assert np.abs(probabilities - expected_probabilities).max() < TOLERANCE
    assert np.abs(unsafe - expected_unsafe).max() < TOLERANCE


def random_age(rng: np.random.Generator) -> AgeCalibration:
    gates = []
    for gate in (13.0, 16.0, 18.0):
        state = GateCalibration(gate, str(rng.choice(["temperature", "isotonic"])), {})
        if state.method == "isotonic":
            state.isotonic_x, state.isotonic_y = random_knots(rng)
        gates.append(state)
    intervals = ConformalIntervals(
        0.9,
        float(rng.uniform(0.5, 3.0)),
        100,
        group_by=["sex"],
        group_quantiles={"female": float(rng.uniform(0.5, 3.0)), "male": float(rng.uniform(0.5, 3.0))},
    )
    return AgeCalibration(float(rng.uniform(0.5, 2.0)), gates, [intervals], 100, float(MAX_AGE))


def head_outputs(kind: str, rng: np.random.Generator, n: int = 400):
    torch.manual_seed(int(rng.integers(1 << 30)))
    head = build_age_head(kind, 8, MAX_AGE).eval()
    with torch.no_grad():
        raw = head(torch.randn(n, 8) * 3)
    return head, raw


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["regression", "dldl", "corn"])
def test_age_calibrator_matches_the_reference(kind, seed):
    rng = np.random.default_rng(seed)
    state = random_age(rng)
    head, raw = head_outputs(kind, rng)
    groups = rng.choice(["female", "male", "unseen"], len(raw))  # "unseen" falls back to the pooled quantile
    calibrator = AgeCalibrator(state, 0.9)
    for rows in (None, groups):
        quantile = None if rows is None else state.intervals[0].row_quantiles(rows)
        values = calibrator.apply(head, raw, quantile)
        reference = age_reference(kind, state, raw.numpy(), 0.9, rows)
        for name, expected in reference.items():
            assert np.abs(values[name] - expected).max() < TOLERANCE * max(1.0, np.abs(expected).max()), name
    assert np.all(np.diff(values["prob_below"], axis=1) >= 0)  # the running maximum across gates


def test_the_reference_notices_a_changed_calibration():
    """The comparison can fail: a calibrator built from another temperature disagrees with the reference."""
    rng = np.random.default_rng(0)
    state = random_content("temperature", rng)
    logits = rng.normal(0, 3, (200, len(state.classes)))
    changed = ContentCalibration(state.method, state.classes, state.unsafe_classes, temperature=state.temperature * 1.1)
    assert np.abs(ContentCalibrator(changed).apply(logits)[0] - content_reference(state, logits)[0]).max() > 1e-3
