"""The content stream policy: k-of-n chosen on calib streams, certified per stream, refused when it cannot be."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from calibration.ood import OODCalibration
from calibration.operating_points import OperatingPoint, required_sample_size
from calibration.state import CalibrationState
from calibration.streams import ScoredStream, choose_content_policy, frame_votes, scored_streams, smoothed
from core.errors import WorkbenchError

FPS = 2.0
SETTINGS = OmegaConf.create(
    {
        "decision": "recall_explicit",
        "deadline_s": 5,
        "report_deadlines_s": [1, 2, 5],
        "min_deadline_recall": 0.9,
        "max_window": 5,
    }
)


def noisy_streams(count: int, seed: int, event_vote: float = 0.9, false_vote: float = 0.05) -> list[ScoredStream]:
    """Half the streams hold a 10-frame event voted True with `event_vote`; benign frames vote True at `false_vote`."""
    rng = np.random.default_rng(seed)
    streams = []
    for i in range(count):
        votes = rng.uniform(size=60) < false_vote
        event = (20, 30) if i % 2 == 0 else None
        if event:
            votes[20:30] = rng.uniform(size=10) < event_vote
        streams.append(ScoredStream(f"s{i}", tuple(bool(v) for v in votes), event))
    return streams


@pytest.fixture(scope="module")
def chosen():
    return choose_content_policy(noisy_streams(120, 0), noisy_streams(120, 1), SETTINGS, FPS, 0.95)


def test_the_chosen_policy_is_certified_and_interrupts_less_than_no_smoothing(chosen):
    policy = chosen
    assert policy.recall_lower_bound >= 0.9 and policy.calib_event_streams == 60
    assert policy.k >= 2  # isolated false votes are what smoothing removes
    chosen, single = policy.test, policy.compared["no_smoothing"]
    assert chosen["interruptions_per_hour"]["value"] < single["interruptions_per_hour"]["value"]
    assert chosen["deadline_recall"]["5s"]["ci_high"] >= 0.9  # the certificate holds on test within its interval
    assert set(policy.compared) == {"k3_of_5", "no_smoothing"} and policy.candidates == 15


def test_too_few_calib_event_streams_are_refused_with_the_number_needed():
    needed = required_sample_size(0.1, 0.95)
    with pytest.raises(WorkbenchError, match=rf"hold 10 streams with an explicit event.*needs {needed} event streams"):
        choose_content_policy(noisy_streams(20, 0), noisy_streams(20, 1), SETTINGS, FPS, 0.95)


def test_a_decision_that_misses_events_certifies_no_policy_and_says_so():
    deaf = noisy_streams(120, 0, event_vote=0.02)
    with pytest.raises(WorkbenchError, match=r"No k-of-n policy .* certifies recall within 5 s .* the best, k=1 of n="):
        choose_content_policy(deaf, deaf, SETTINGS, FPS, 0.95)


def test_a_stream_fails_closed_until_its_first_vote_and_abstentions_do_not_vote():
    assert smoothed((None, None, False, None, True), 2, 3).tolist() == [True, True, False, False, True]


def test_frame_votes_follow_the_graph_rules_and_an_unknown_decision_is_named():
    point = OperatingPoint("recall_explicit", 0.5, 0.01, 0.95, 1, 0, 0.1, 0.0, 1, target="explicit")
    state = CalibrationState("content", None, "x", 0.95, operating_points=[point])
    state.ood = OODCalibration([0.0], [1.0], threshold=2.0, quantile=0.995, calib_size=1, calib_abstention_rate=0.0)
    outputs = {"scores": np.array([[0.5], [0.49], [0.9]]), "ood_score": np.array([0.1, 0.1, 2.5])}
    assert frame_votes(outputs, state, "recall_explicit") == [True, False, None]  # ties block; OOD abstains
    with pytest.raises(WorkbenchError, match=r"decision='recall_unsafe' is not an operating point.*recall_explicit"):
        frame_votes(outputs, state, "recall_unsafe")


def test_streams_are_grouped_by_split_in_frame_order_with_their_events():
    import pandas as pd

    manifest = pd.DataFrame(
        {
            "split": ["test", "calib", "calib", "calib"],
            "stream_id": ["b", "a", "a", "a"],
            "frame_index": [0, 2, 0, 1],
            "event_start": [-1, 1, 1, 1],
            "event_end": [-1, 3, 3, 3],
        }
    )
    streams = scored_streams(manifest, [False, True, None, False])
    assert streams["calib"] == [ScoredStream("a", (None, False, True), (1, 3))]
    assert streams["test"] == [ScoredStream("b", (False,), None)]


def test_the_stream_policy_is_a_scorecard_row_that_fails_when_its_certificate_does_not_hold(chosen):
    from dataclasses import replace

    from evaluation.scorecard import scorecard

    policy = chosen
    state = CalibrationState("content", None, "x", 0.95, stream=policy)
    (row,) = scorecard(state).to_dict("records")
    assert row["verdict"] == "PASS" and row["operating point"] == f"stream: {policy.k} of {policy.n} (recall_explicit)"
    assert "interruptions" in " ".join(scorecard(state).columns)
    weak = replace(policy, recall_lower_bound=0.85)
    assert scorecard(replace(state, stream=weak))["why"][0] == "calib bound 15.00% exceeds the target 10.00%"
    missed = replace(
        policy, test=policy.test | {"deadline_recall": {"5s": {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9}}}
    )
    assert scorecard(replace(state, stream=missed))["verdict"][0] == "FAIL"


def test_the_report_plots_each_rule_s_trade_off_and_time_to_block(chosen):
    from evaluation.report import stream_rules_plot

    policy = chosen
    figure = stream_rules_plot({"chosen": policy.test} | policy.compared, "5s")
    trade, cdf = figure.axes
    assert len(cdf.get_lines()) == 3 and len(trade.containers) == 3  # three rules, each with both intervals
    assert len(policy.test["seconds_to_block"]) == policy.test["event_streams"] == 60
