"""One figure, one interval: evaluate and the contract compute each headline through one function,
whose interval resamples whole subjects and always contains its value."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import bootstrap

from calibration.content import ContentCalibration
from calibration.operating_points import OperatingPoint, clopper_pearson, measure, row_units, unit_rate
from calibration.state import CalibrationState
from evaluation.age import gate_analysis, mae
from evaluation.content import accuracy, content_metrics
from evaluation.evaluate import headline_functions
from evaluation.fairness import fairness_table
from evaluation.stats import subject_bootstrap, subject_mean, subject_rate
from export.metrics import headline, sliced

CLASSES = ["safe", "suggestive", "explicit"]


def _uneven_age_frame(seed: int = 0) -> pd.DataFrame:
    """One subject with 400 well-predicted images, 40 badly predicted subjects with one image each."""
    rng = np.random.default_rng(seed)
    sizes = np.array([400] + [1] * 40)
    subject = np.repeat(np.arange(sizes.size), sizes)
    age = rng.uniform(5, 60, subject.size)
    error = np.where(subject == 0, rng.normal(0, 1.5, subject.size), rng.normal(0, 1, subject.size) + 9)
    return pd.DataFrame(
        {
            "age": age,
            "expected_age": (age + error).astype(np.float32),
            "subject_id": [f"s{s}" for s in subject],
            "sex": np.where(subject % 2 == 0, "female", "male"),
        }
    )


def _content_frame(seed: int = 1) -> pd.DataFrame:
    """Scenes of 1 to 12 images whose frames are all right or all wrong together."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 13, 120)
    scene = np.repeat(np.arange(sizes.size), sizes)
    labels = rng.integers(0, 3, sizes.size)[scene]
    right = (rng.uniform(size=sizes.size) < 0.8)[scene]
    predicted = np.where(right, labels, (labels + 1) % 3)
    logits = rng.normal(0, 0.3, (scene.size, 3)) + 3.0 * np.eye(3)[predicted]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return pd.DataFrame(
        {
            "label": labels,
            "subject_id": [f"scene{s}" for s in scene],
            **{f"p_{c}": probs[:, i] for i, c in enumerate(CLASSES)},
            "unsafe_score": probs[:, 1:].sum(1),
            "sex": np.where(scene % 3 == 0, "female", "male"),
        }
    )


def test_mae_on_uneven_subjects_lies_inside_its_interval_where_the_old_one_excluded_it():
    frame = _uneven_age_frame()
    estimate = mae(frame)
    errors = (frame["expected_age"].astype(np.float64) - frame["age"]).abs()
    assert estimate.value == pytest.approx(errors.mean(), rel=1e-12)
    assert estimate.low <= estimate.value <= estimate.high
    # The old contract bootstrapped the mean of per-subject means: an interval far from the reported value.
    per_subject = errors.groupby(frame["subject_id"]).mean().to_numpy()
    old = bootstrap((per_subject,), np.mean, n_resamples=2000, method="percentile", random_state=0)
    assert old.confidence_interval.low > estimate.value


def test_contract_headline_and_slices_equal_evaluates_figures_exactly():
    frame = _uneven_age_frame()
    outputs = {"expected_age": frame["expected_age"].to_numpy()}
    estimate = mae(frame)
    assert headline("age", outputs, frame, "age") == {
        "value": estimate.value,
        "ci_low": estimate.low,
        "ci_high": estimate.high,
        "n": len(frame),
    }
    overall = {"mae": estimate}
    table = fairness_table(frame.copy(), ["sex"], {"mae": mae}, overall).set_index("value")
    for value, figure in sliced("age", outputs, frame, "age", ["sex"])["sex"].items():
        row = table.loc[value]
        assert (figure["value"], figure["ci_low"], figure["ci_high"]) == (row["value_num"], row["low"], row["high"])


def test_content_accuracy_is_the_same_figure_in_evaluate_its_slices_and_the_contract():
    frame = _content_frame()
    probs = frame[[f"p_{c}" for c in CLASSES]].to_numpy()
    state = CalibrationState("content", None, "", 0.95, content=ContentCalibration("temperature", CLASSES, CLASSES[1:]))
    metrics, _ = content_metrics(frame, CLASSES, CLASSES[1:], 0.005, {}, calibrated=True)
    sliced_function = headline_functions(state)["accuracy"]
    contract = headline("content", {"probabilities": probs}, frame, "label")
    assert contract == metrics["accuracy"].to_dict() == sliced_function(frame).to_dict()
    assert contract["ci_low"] <= contract["value"] <= contract["ci_high"]


def test_accuracy_interval_counts_scenes_not_images():
    frame = _content_frame()
    probs = frame[[f"p_{c}" for c in CLASSES]].to_numpy()
    correct = probs.argmax(1) == frame["label"].to_numpy()
    estimate = accuracy(probs, frame["label"].to_numpy(), frame["subject_id"].to_numpy())
    image_low, image_high = clopper_pearson(int(correct.sum()), correct.size)
    # Frames of a scene are right or wrong together: about 6.5 images per scene behave like one.
    assert estimate.high - estimate.low > 1.8 * (image_high - image_low)


def test_a_percentile_interval_that_would_exclude_the_value_is_widened_to_contain_it():
    spread = np.linspace(0.1, 2.0, 25)
    values = np.repeat(np.concatenate([spread, -spread]), 2)  # two images per subject, overall mean 0
    subjects = np.repeat(np.arange(50), 2)

    def squared_mean(rows: np.ndarray) -> float:
        return float(values[rows].mean() ** 2)

    raw = bootstrap(
        (np.arange(50),),
        lambda chosen: squared_mean(np.concatenate([np.flatnonzero(subjects == i) for i in chosen])),
        vectorized=False,
        n_resamples=300,
        method="percentile",
        random_state=0,
    )
    estimate = subject_bootstrap(squared_mean, subjects, "x", n_resamples=300)
    assert estimate.value < raw.confidence_interval.low  # the raw interval excludes the statistic's own value
    assert estimate.low == estimate.value and estimate.high == raw.confidence_interval.high


def test_images_without_a_subject_id_are_units_of_their_own():
    frame = pd.DataFrame({"id": [f"i{k}" for k in range(10)], "subject_id": None, "age": 20.0})
    alone = mae(frame.assign(expected_age=20.0 + np.arange(10)))
    assert alone.low is not None and alone.low < alone.value < alone.high
    one_subject = subject_mean(np.arange(10, dtype=float), np.array(["a"] * 10), "x")
    assert one_subject.low is None and "too few subjects" in one_subject.reason
    assert one_subject.to_dict() == {
        "value": 4.5,
        "ci_low": None,
        "ci_high": None,
        "n": 10,
        "reason": one_subject.reason,
    }


def _point(name: str, threshold: float, target: str, gate: float | None = None) -> OperatingPoint:
    return OperatingPoint(name, threshold, 0.05, 0.95, 0, 0, 1.0, None, 0, target=target, gate=gate, unit="units")


def test_operating_point_rates_equal_the_contracts_per_person_rates():
    frame = _uneven_age_frame()
    score = 1 / (1 + np.exp(frame["expected_age"].to_numpy(np.float64) - 13))
    point = _point("gate13", 0.4, "minor", 13.0)
    frame["block_gate13"] = score >= point.threshold
    minors, units = frame["age"].to_numpy() < 13, row_units(frame)
    contract = measure(point, score[minors], score[~minors], units[minors], units[~minors])
    metrics, per_year = gate_analysis(frame, 13.0, calibrated=True)
    passed = metrics["gate13/minor_pass_rate"]
    assert (passed.value, passed.low, passed.high, passed.n) == (
        contract["miss_rate"],
        contract["miss_rate_ci_low"],
        contract["miss_rate_ci_high"],
        contract["positives"],
    )
    assert metrics["gate13/adult_false_rejection"].value == contract["false_alarm_rate"]
    year = np.floor(frame["age"].to_numpy()) == 12
    twelve = unit_rate(score[year] < point.threshold, units[year], 0.95)
    row = per_year.set_index("true_age").loc[12]
    assert (row["rate"], row["low"], row["high"], row["n"]) == (
        twelve["rate"],
        twelve["ci_low"],
        twelve["ci_high"],
        twelve["units"],
    )


def test_content_point_recall_and_precision_equal_the_contracts():
    frame = _content_frame()
    score = frame["p_explicit"].to_numpy()
    point = _point("recall_explicit", 0.3, "explicit")
    frame["block_recall_explicit"] = score >= point.threshold
    explicit, units = frame["label"].to_numpy() == 2, row_units(frame)
    contract = measure(point, score[explicit], score[~explicit], units[explicit], units[~explicit], base_rate=0.005)
    metrics, _ = content_metrics(
        frame, CLASSES, CLASSES[1:], 0.005, {"recall_explicit": ("explicit", "label")}, calibrated=True
    )
    recall = metrics["recall_explicit/recall"]
    assert (recall.value, recall.low, recall.high) == (
        1 - contract["miss_rate"],
        1 - contract["miss_rate_ci_high"],
        1 - contract["miss_rate_ci_low"],
    )
    assert metrics["recall_explicit/false_alarm_rate"].value == contract["false_alarm_rate"]
    assert metrics["recall_explicit/precision_at_base_rate"].value == contract["precision_at_base_rate"]


def test_a_rate_with_no_hits_gets_an_exact_bound_over_subjects_not_a_certain_zero():
    """A bootstrap of all-zero flags is [0, 0]; the rate falls back to Clopper-Pearson over subjects."""
    subjects = np.repeat(np.arange(40), 3)
    none = subject_rate(np.zeros(120, bool), subjects, "negatives")
    assert (none.value, none.low) == (0.0, 0.0) and none.high == pytest.approx(clopper_pearson(0, 40)[1])
    every = subject_rate(np.ones(120, bool), subjects, "negatives")
    assert (every.value, every.high) == (1.0, 1.0) and every.low == pytest.approx(clopper_pearson(40, 40)[0])
    some = subject_rate(np.arange(120) % 7 == 0, subjects, "negatives")
    assert 0 < some.low < some.value < some.high < 1
