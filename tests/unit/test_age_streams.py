"""Per-stream age figures: averaging a person's frames lowers the minor pass rate at the same adult false rejection."""

import numpy as np
import pandas as pd
import pytest
from childsafe_runtime.smoothing import MeanLogitWindow
from scipy.special import expit

from calibration.age import AgeCalibration
from calibration.age_streams import (
    fit_age_policy,
    matched_threshold,
    measure_age_streams,
    running_scores,
    window_scores,
)
from calibration.ood import OODCalibration
from calibration.operating_points import OperatingPoint
from calibration.state import CalibrationState
from core.errors import WorkbenchError

GATE = 18.0


def test_the_running_score_is_the_mean_logit_of_the_decided_frames_and_fails_closed_before_any():
    scores = running_scores(np.array([0.5, 0.9, 0.1, 0.9]), np.array([False, True, True, False]), 4)
    logit_9 = np.log(9.0)
    assert scores[0] == np.inf  # nothing decided yet: counted as a minor
    assert np.allclose(scores[1:], [logit_9, 0.0, 0.0])


def test_the_matched_threshold_flags_that_share_of_adults():
    adults = np.arange(100.0)
    assert (adults >= matched_threshold(adults, 0.1)).mean() == 0.1
    assert (adults >= matched_threshold(adults, 0.0)).mean() == 0.0


def noisy_people(count: int, frames: int, seed: int, split: str) -> tuple[pd.DataFrame, np.ndarray]:
    """People of ages 10-30 whose frames' P(age < 18) carry independent per-frame noise of 4 years."""
    rng = np.random.default_rng(seed)
    ages = rng.uniform(10, 30, count)
    rows, probabilities = [], []
    for person, age in enumerate(ages):
        apparent = age + rng.normal(0, 4, frames)
        probabilities.extend(expit((GATE - apparent) / 1.5))
        rows += [
            {"split": split, "stream_id": f"{split}-{person}", "frame_index": f, "age": age} for f in range(frames)
        ]
    return pd.DataFrame(rows), np.array(probabilities)


def test_a_whole_stream_passes_fewer_minors_than_one_frame_at_the_same_adult_false_rejection():
    calib, calib_p = noisy_people(400, 8, 0, "calib")
    test, test_p = noisy_people(400, 8, 1, "test")
    manifest = pd.concat([calib, test], ignore_index=True)
    outputs = {"prob_below": np.concatenate([calib_p, test_p])[:, None], "ood_score": np.zeros(len(manifest))}
    point = OperatingPoint("gate18", 0.3, 0.05, 0.95, 1, 0, 0.1, 0.2, 1, target="minor", gate=GATE)
    state = CalibrationState("age", None, "x", 0.95, age=AgeCalibration.identity([GATE], 80), operating_points=[point])
    state.ood = OODCalibration([0.0], [1.0], threshold=1.0, quantile=0.995, calib_size=1, calib_abstention_rate=0.0)
    figures = measure_age_streams(manifest, outputs, state, 2.0, 8, 0.05)
    (gate,) = figures.gates
    frame, whole = gate["per_frame"], gate["per_stream"][-1]
    assert whole["frames"] == 8 and whole["seconds"] == 4.0 and figures.test_streams == 400
    # The same adult false rejection (within sampling noise), and a lower minor pass rate.
    assert abs(whole["adult_false_rejection"]["value"] - frame["adult_false_rejection"]["value"]) < 0.05
    assert whole["minor_pass_rate"]["value"] < 0.5 * frame["minor_pass_rate"]["value"]
    assert whole["minor_pass_rate"]["ci_high"] < frame["minor_pass_rate"]["value"]
    assert gate["per_stream"][0]["minor_pass_rate"]["value"] >= whole["minor_pass_rate"]["value"]
    assert gate["frames_needed"] is not None and 1 <= gate["frames_needed"] <= 8


def test_the_report_plots_pass_rate_and_false_rejection_against_frames_seen():
    from evaluation.report import frames_seen_plot

    gates = [
        {
            "gate": gate,
            "per_stream": [
                {
                    "frames": m,
                    "minor_pass_rate": {"value": 0.1 / m, "ci_low": 0.0, "ci_high": 0.2},
                    "adult_false_rejection": {"value": None, "ci_low": None, "ci_high": None},
                }
                for m in (1, 2, 3)
            ],
        }
        for gate in (13.0, 18.0)
    ]
    passes, rejections = frames_seen_plot(gates).axes
    assert [len(line.get_xdata()) for line in passes.get_lines()] == [3, 3]
    assert len(rejections.get_lines()) == 2  # a gate with nothing measurable is drawn empty, not dropped


def _state(gate: float = GATE) -> CalibrationState:
    point = OperatingPoint(f"gate{gate:g}", 0.3, 0.05, 0.95, 1, 0, 0.1, 0.2, 1, target="minor", gate=gate)
    state = CalibrationState("age", None, "x", 0.95, age=AgeCalibration.identity([gate], 80), operating_points=[point])
    state.ood = OODCalibration([0.0], [1.0], threshold=1.0, quantile=0.995, calib_size=1, calib_abstention_rate=0.0)
    return state


def _people(count: int, frames: int) -> tuple[pd.DataFrame, dict]:
    calib, calib_p = noisy_people(count, frames, 0, "calib")
    test, test_p = noisy_people(count, frames, 1, "test")
    manifest = pd.concat([calib, test], ignore_index=True)
    return manifest, {"prob_below": np.concatenate([calib_p, test_p])[:, None], "ood_score": np.zeros(len(manifest))}


class Settings:
    max_minor_pass_rate = 0.05
    max_window = 6


def test_window_scores_are_the_runtime_windows_and_block_until_n_frames_are_decided():
    probabilities = np.array([[0.2], [0.9], [0.6], [0.3]])
    decided = np.array([True, False, True, True])
    scores = window_scores(probabilities, decided, 2)
    assert np.isinf(scores[:2, 0]).all()  # one decided frame so far: blocked
    window = MeanLogitWindow(2, {"gate18": 0.0})
    replayed = [
        window.update({"gate18": float(p[0])} if d else None) for p, d in zip(probabilities, decided, strict=True)
    ]
    assert [r["gate18"] for r in replayed] == [bool(s >= 0.0) for s in scores[:, 0]]
    assert np.isclose(scores[2, 0], np.mean(np.log([0.2 / 0.8, 0.6 / 0.4])))


def test_the_age_policy_certifies_every_gate_per_person_and_holds_on_test():
    manifest, outputs = _people(400, 8)
    policy = fit_age_policy(manifest, outputs, _state(), Settings, 2.0)
    (gate,) = policy.gates
    assert 1 <= policy.n <= 6 and policy.candidates == 6 and gate["column"] == "gate18"
    certificate = gate["certificate"]
    assert certificate["pass_rate_upper_bound"] <= 0.05 and certificate["minor_people"] > 59
    # The certified bound holds on test streams within sampling error, and the stream beats one frame at a time.
    assert gate["test"]["minor_pass_rate"]["ci_low"] <= 0.05
    assert gate["test"]["minor_pass_rate"]["value"] <= gate["per_frame"]["minor_pass_rate"]["value"]
    # Recount on calib: a minor passes when any window of their stream passes.
    calib = manifest[manifest["split"] == "calib"]
    passed = 0
    for _, rows in calib[calib["age"] < GATE].groupby("stream_id"):
        p = outputs["prob_below"][rows.sort_values("frame_index").index.to_numpy()]
        passed += bool((window_scores(p, np.ones(len(p), bool), policy.n)[:, 0] < gate["threshold_logit"]).any())
    assert passed == certificate["passed"]


def test_too_few_minor_streams_is_refused_with_the_number_a_certificate_needs():
    manifest, outputs = _people(40, 4)
    with pytest.raises(WorkbenchError, match=r"needs at least 59 .*num_streams about"):
        fit_age_policy(manifest, outputs, _state(), Settings, 2.0)
