"""The safety scorecard's verdicts: PASS only when the certificate, the point and the test split all hold."""

from __future__ import annotations

from dataclasses import replace

from export_cases import age_case, point
from test_age_streams import Settings, _people, _state

from calibration.age_streams import fit_age_policy
from evaluation.scorecard import scorecard, verdict_line

MEASURED = {"miss_rate": 0.004, "miss_rate_ci_low": 0.001, "miss_rate_ci_high": 0.012, "false_alarm_rate": 0.15}


def card_for(**changes):
    _, state, _ = age_case("small_cnn", "dldl")
    good = replace(
        point("gate13", 0.4, "minor", 13.0), miss_rate_upper_bound=0.009, target_max_miss_rate=0.01, unit="subjects"
    )
    good = replace(good, test=MEASURED | {"near_gate": [{"age": 12, "hits": 1, "units": 34, "rate": 1 / 34}]})
    return scorecard(replace(state, operating_points=[good, replace(good, name="gate18", gate=18.0, **changes)]))


def test_every_point_within_its_target_passes():
    card = card_for()
    assert list(card["verdict"]) == ["PASS", "PASS"]
    assert verdict_line(card).startswith("PASS: all 2 operating points")
    assert card.loc[0, "test miss rate per subject [95% CI]"] == "0.40% [0.10%, 1.20%]"
    assert card.loc[0, "near-gate pass rates (test)"] == "age 12: 1/34 (2.94%)"
    assert card.loc[0, "protects"] == "people under 13"


def test_each_failure_is_named_in_the_verdict():
    assert "calib bound 1.20% exceeds the target 1.00%" in verdict_line(card_for(miss_rate_upper_bound=0.012))
    assert "degenerate" in verdict_line(card_for(degenerate=True, false_alarm_rate=0.9))
    assert "test miss rate 2.00% exceeds" in verdict_line(card_for(test=MEASURED | {"miss_rate": 0.02}))
    assert "not measured on test" in verdict_line(card_for(test={}))
    line = verdict_line(card_for(test={}))
    assert line.startswith("FAIL: 1 of 2 operating points fail (gate18:")


def test_a_certified_age_stream_policy_is_a_row_per_gate_that_fails_like_a_point():
    manifest, outputs = _people(400, 8)
    state = _state()
    policy = fit_age_policy(manifest, outputs, state, Settings, 2.0)
    card = scorecard(replace(state, age_policy=policy, operating_points=[]))
    (row,) = card.to_dict("records")
    assert row["operating point"] == f"stream: gate18, mean logit over {policy.n} frames"
    assert row["protects"] == "people under 18, over a whole stream"
    assert row["verdict"] == ("PASS" if policy.gates[0]["test"]["minor_pass_rate"]["value"] <= 0.05 else "FAIL")
    loose = replace(
        policy,
        gates=[policy.gates[0] | {"certificate": policy.gates[0]["certificate"] | {"pass_rate_upper_bound": 0.2}}],
    )
    assert "calib bound 20.00% exceeds the target 5.00%" in verdict_line(
        scorecard(replace(state, age_policy=loose, operating_points=[]))
    )
