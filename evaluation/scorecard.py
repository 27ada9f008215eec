"""The safety scorecard: one row per operating point, its target, what test measured, and a verdict.

It is what a reviewer reads first, on the evaluate run (an MLflow table and the run's description)
and at the top of the report. A point PASSES when its calib certificate meets the target (the bound
export ships), it is not degenerate, and the test split's miss rate is within the target too; the
test interval is shown beside it, so a pass on a small test split reads as the estimate it is.
"""

from __future__ import annotations

import pandas as pd

from calibration.age_streams import AgeStreamPolicy
from calibration.operating_points import OperatingPoint
from calibration.state import CalibrationState
from calibration.streams import ContentStreamPolicy

PASS, FAIL = "PASS", "FAIL"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _interval(test: dict, key: str) -> str:
    low, high = test.get(f"{key}_ci_low"), test.get(f"{key}_ci_high")
    return f"{_pct(test.get(key))} [{_pct(low)}, {_pct(high)}]" if low is not None else _pct(test.get(key))


def _near_gate(point: OperatingPoint) -> str:
    years = point.test.get("near_gate", [])
    return "; ".join(f"age {y['age']}: {y['hits']}/{y['units']} ({_pct(y['rate'])})" for y in years) or "-"


def _judged(bound: float, target: float, test_rate: float | None, certified_on: str) -> tuple[str, str]:
    """The verdict every row shares: the calib bound within the target, then the test rate within it too."""
    if bound > target:
        return FAIL, f"calib bound {_pct(bound)} exceeds the target {_pct(target)}"
    if test_rate is None:
        return FAIL, "not measured on test"
    if test_rate > target:
        return FAIL, f"test miss rate {_pct(test_rate)} exceeds the target {_pct(target)}"
    return PASS, f"certified on {certified_on} and within the target on test"


def _verdict(point: OperatingPoint) -> tuple[str, str]:
    if point.degenerate and point.miss_rate_upper_bound <= point.target_max_miss_rate:
        return FAIL, f"degenerate: flags {_pct(point.false_alarm_rate)} of calib negatives"
    return _judged(point.miss_rate_upper_bound, point.target_max_miss_rate, point.test.get("miss_rate"), "calib")


def _stream_row(policy: ContentStreamPolicy) -> dict[str, str]:
    """The certified stream policy as a row: its miss rate is the share of event streams not blocked in time."""
    target, bound = 1 - policy.min_deadline_recall, 1 - policy.recall_lower_bound
    recall = policy.test["deadline_recall"][f"{policy.deadline_s:g}s"]
    missed = None if recall["value"] is None else 1 - recall["value"]
    interval = (
        f"{_pct(missed)} [{_pct(1 - recall['ci_high'])}, {_pct(1 - recall['ci_low'])}]" if missed is not None else "n/a"
    )
    rate = policy.test["interruptions_per_hour"]
    interruptions = (
        "n/a" if rate["value"] is None else f"{rate['value']:.2f} [{rate['ci_low']:.2f}, {rate['ci_high']:.2f}]"
    )
    verdict, why = _judged(bound, target, missed, "calib streams")
    return {
        "operating point": f"stream: {policy.k} of {policy.n} ({policy.decision})",
        "protects": f"streams with an explicit event, blocked within {policy.deadline_s:g} s",
        "target: max miss rate": _pct(target),
        f"calib bound ({policy.confidence:.0%} confidence)": _pct(bound),
        "test miss rate per stream [95% CI]": interval,
        "test false interruptions per hour [95% CI]": interruptions,
        "verdict": verdict,
        "why": why,
    }


def _estimate(rate: dict) -> str:
    if rate["value"] is None:
        return "n/a"
    return f"{_pct(rate['value'])} [{_pct(rate['ci_low'])}, {_pct(rate['ci_high'])}]"


def _age_stream_rows(policy: AgeStreamPolicy) -> list[dict[str, str]]:
    """Per gate, the certified age stream policy: minors whose stream passed at any window, against the target."""
    rows = []
    for gate in policy.gates:
        certificate, test = gate["certificate"], gate["test"]
        verdict, why = _judged(
            certificate["pass_rate_upper_bound"],
            policy.max_minor_pass_rate,
            test["minor_pass_rate"]["value"],
            "calib streams",
        )
        rows.append(
            {
                "operating point": f"stream: {gate['column']}, mean logit over {policy.n} frames",
                "protects": f"people under {gate['gate']:g}, over a whole stream",
                "target: max miss rate": _pct(policy.max_minor_pass_rate),
                f"calib bound ({policy.confidence:.0%} confidence)": _pct(certificate["pass_rate_upper_bound"]),
                "test miss rate per person [95% CI]": _estimate(test["minor_pass_rate"]),
                "test adult false rejection per stream [95% CI]": _estimate(test["adult_false_rejection"]),
                "verdict": verdict,
                "why": why,
            }
        )
    return rows


def scorecard(state: CalibrationState) -> pd.DataFrame:
    """One row per operating point, and one for a certified stream policy; rates in percent as text, so the
    MLflow table reads as the report does."""
    rows = []
    for point in state.operating_points:
        verdict, reason = _verdict(point)
        protects = f"people under {point.gate:g}" if point.target == "minor" else f"'{point.target}' {point.unit}"
        rows.append(
            {
                "operating point": point.name,
                "protects": protects,
                "target: max miss rate": _pct(point.target_max_miss_rate),
                f"calib bound ({point.confidence:.0%} confidence)": _pct(point.miss_rate_upper_bound),
                f"test miss rate per {point.unit.rstrip('s')} [95% CI]": _interval(point.test, "miss_rate"),
                "test false-alarm rate per image [95% CI]": _interval(point.test, "false_alarm_rate"),
                "precision at base rate": (
                    f"{point.test['precision_at_base_rate']:.3f} at {_pct(point.test.get('base_rate'))}"
                    if point.test.get("precision_at_base_rate") is not None
                    else "n/a"
                ),
                "near-gate pass rates (test)": _near_gate(point),
                "verdict": verdict,
                "why": reason,
            }
        )
    if state.stream is not None:
        rows.append(_stream_row(state.stream))
    if state.age_policy is not None:
        rows += _age_stream_rows(state.age_policy)
    return pd.DataFrame(rows)


def verdict_line(card: pd.DataFrame) -> str:
    """The decision in one line: PASS when every point passes, else which failed and why."""
    failed = card[card["verdict"] == FAIL]
    if card.empty:
        return f"{FAIL}: no operating point was calibrated"
    if failed.empty:
        return f"{PASS}: all {len(card)} operating points certified on calib and within their targets on test"
    reasons = "; ".join(f"{row['operating point']}: {row['why']}" for _, row in failed.iterrows())
    return f"{FAIL}: {len(failed)} of {len(card)} operating points fail ({reasons})"
