"""Certified figures that test measured past their targets become release warnings that say how to read them."""

from types import SimpleNamespace

from export.shortfalls import shortfall_warnings


def rate(value, low, high, n):
    return {"value": value, "ci_low": low, "ci_high": high, "n": n}


def point(name, miss_rate, low, high, target=0.01):
    test = {"miss_rate": miss_rate, "miss_rate_ci_low": low, "miss_rate_ci_high": high, "positives": 400}
    return SimpleNamespace(name=name, unit="subjects", test=test, target_max_miss_rate=target)


def state(points=(), age_gates=None, content_recall=None):
    age = None if age_gates is None else SimpleNamespace(gates=age_gates, max_minor_pass_rate=0.01)
    stream = None
    if content_recall is not None:
        stream = SimpleNamespace(
            test={"deadline_recall": {"5s": content_recall}}, deadline_s=5.0, min_deadline_recall=0.9
        )
    return SimpleNamespace(operating_points=list(points), age_policy=age, stream=stream)


def test_figures_within_their_targets_give_no_warning():
    held = state(
        [point("gate13", 0.0, 0.0, 0.0066)],
        [{"gate": 16.0, "test": {"minor_pass_rate": rate(0.004, 0.0005, 0.0145, 494)}}],
        rate(1.0, 0.94, 1.0, 60),
    )
    assert shortfall_warnings(held) == []


def test_a_test_point_past_the_target_inside_its_interval_is_read_as_sampling_error():
    """The demo's gate 16: 6 of 439 test people passed the certified 1% policy."""
    (warning,) = shortfall_warnings(state(age_gates=[
        {"gate": 13.0, "test": {"minor_pass_rate": rate(0.0028, 0.0001, 0.0154, 359)}},
        {"gate": 16.0, "test": {"minor_pass_rate": rate(0.0137, 0.0050, 0.0295, 439)}},
    ]))  # fmt: skip
    assert "passed people under 16: 0.0137 on test (n=439, 95% CI 0.0050-0.0295)" in warning
    assert "at most 0.01" in warning and "neither confirms nor refutes" in warning


def test_an_interval_that_excludes_the_target_says_the_guarantee_does_not_hold():
    (warning,) = shortfall_warnings(state([point("gate18", 0.05, 0.03, 0.07)]))
    assert "operating point 'gate18' missed subjects: 0.0500" in warning and "does not hold" in warning


def test_recall_below_its_target_is_a_shortfall_and_an_unmeasured_figure_is_not():
    (warning,) = shortfall_warnings(
        state([point("gate13", None, None, None)], content_recall=rate(0.85, 0.75, 0.92, 60))
    )
    assert "blocked event streams within 5 s: 0.8500" in warning and "at least 0.9" in warning
    assert "neither confirms nor refutes" in warning
