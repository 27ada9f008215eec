"""Per-stream age figures: averaging a person's frames lowers the minor pass rate at the same adult false rejection."""

import numpy as np
import pandas as pd
from scipy.special import expit

from calibration.age import AgeCalibration
from calibration.age_streams import matched_threshold, measure_age_streams, running_scores
from calibration.ood import OODCalibration
from calibration.operating_points import OperatingPoint
from calibration.state import CalibrationState

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
