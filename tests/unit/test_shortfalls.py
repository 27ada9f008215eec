"""Certified figures that test measured past their targets become release warnings that say how to read them."""

from evaluation.shortfalls import certified_figures, shortfall_warnings


def rate(value, low, high, n):
    return {"value": value, "ci_low": low, "ci_high": high, "n": n}


def point(name, miss_rate, low, high, target=0.01):
    test = {"miss_rate": miss_rate, "miss_rate_ci_low": low, "miss_rate_ci_high": high, "positives": 400}
    return {"name": name, "test": test, "guarantee": {"unit": "subjects", "target_max_miss_rate": target}}


def age_stream(*gates):
    return {
        "certified": True,
        "policy": {"method": "mean_logit", "n": 6},
        "certificate": {"max_minor_pass_rate": 0.01},
        "gates": [{"gate": gate, "test": {"minor_pass_rate": figure}} for gate, figure in gates],
    }


def content_stream(recall):
    return {
        "certified": True,
        "policy": {"method": "k_of_n", "k": 1, "n": 1},
        "certificate": {"deadline_s": 5.0, "min_recall": 0.9},
        "test": {"deadline_recall": {"5s": recall}},
    }


def contract(points=(), stream=None):
    return {"operating_points": list(points), **({"stream": stream} if stream else {})}


def test_figures_within_their_targets_give_no_warning():
    held = contract([point("gate13", 0.0, 0.0, 0.0066)], age_stream((16.0, rate(0.004, 0.0005, 0.0145, 494))))
    assert [f.name for f in certified_figures(held)] == ["gate13", "age stream gate 16"]
    assert shortfall_warnings(held) == []
    assert shortfall_warnings(contract(stream=content_stream(rate(1.0, 0.94, 1.0, 60)))) == []


def test_a_test_point_past_the_target_inside_its_interval_is_read_as_sampling_error():
    """The demo's gate 16: 6 of 439 test people passed the certified 1% policy."""
    stream = age_stream((13.0, rate(0.0028, 0.0001, 0.0154, 359)), (16.0, rate(0.0137, 0.0050, 0.0295, 439)))
    (warning,) = shortfall_warnings(contract(stream=stream))
    assert "passed people under 16: 0.0137 on test (n=439, 95% CI 0.0050-0.0295)" in warning
    assert "at most 0.01" in warning and "neither confirms nor refutes" in warning
    assert not any(f.contradicted for f in certified_figures(contract(stream=stream)))


def test_an_interval_that_excludes_the_target_says_the_guarantee_does_not_hold():
    figures = contract([point("gate18", 0.05, 0.03, 0.07)])
    (warning,) = shortfall_warnings(figures)
    assert "operating point 'gate18' missed subjects: 0.0500" in warning and "does not hold" in warning
    assert certified_figures(figures)[0].contradicted


def test_recall_below_its_target_is_a_shortfall_and_an_unmeasured_or_uncertified_figure_is_not():
    low_recall = contract([point("gate13", None, None, None)], content_stream(rate(0.85, 0.75, 0.92, 60)))
    (warning,) = shortfall_warnings(low_recall)
    assert "blocked event streams within 5 s: 0.8500" in warning and "at least 0.9" in warning
    assert "neither confirms nor refutes" in warning
    assert certified_figures(contract(stream={"certified": False, "reason": "too few streams"})) == []
