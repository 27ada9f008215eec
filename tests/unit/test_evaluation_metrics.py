"""Every evaluation metric against an independent reference: scipy, or a brute-force loop."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from evaluation.age import age_metrics, band_test, gate_analysis
from evaluation.content import content_metrics
from evaluation.fairness import disparity_ratio, fairness_table
from evaluation.stats import proportion, subject_bootstrap


def _age_frame(n=600, seed=0, noise=3.0):
    rng = np.random.default_rng(seed)
    age = rng.uniform(0, 40, n)
    predicted = age + rng.normal(0, noise, n)
    p_below = 1 / (1 + np.exp(-(18 - predicted) / 2))
    return pd.DataFrame(
        {
            "age": age,
            "expected_age": predicted,
            "subject_id": [f"s{i // 2}" for i in range(n)],
            "p_below_18": p_below,
            "block_gate18": p_below >= 0.3,
            "sex": rng.choice(["female", "male"], n),
            "interval_low": predicted - 5,
            "interval_high": predicted + 5,
        }
    )


def test_proportion_interval_is_the_exact_binomial_interval():
    hits = np.array([True] * 7 + [False] * 93)
    estimate = proportion(hits, "x")
    reference = binomtest(7, 100).proportion_ci(0.95, method="exact")
    assert estimate.value == 0.07
    assert estimate.low == pytest.approx(reference.low) and estimate.high == pytest.approx(reference.high)


def test_gate_analysis_matches_a_brute_force_loop():
    frame = _age_frame()
    metrics, per_year = gate_analysis(frame, 18.0, calibrated=True)
    passes = ~frame["block_gate18"].to_numpy()
    minors = frame["age"].to_numpy() < 18
    subjects = frame["subject_id"].to_numpy()

    def people_passing(members):  # a person passes when any of their images in `members` passes
        people = {s for s, m in zip(subjects, members, strict=True) if m}
        passing = {s for s, p, m in zip(subjects, passes, members, strict=True) if m and p}
        return len(passing) / len(people), len(people)

    brute_pass, people = people_passing(minors)
    assert metrics["gate18/minor_pass_rate"].value == pytest.approx(brute_pass)
    assert metrics["gate18/minor_pass_rate"].n == people < minors.sum()
    far = frame["age"].to_numpy() <= 15
    assert metrics["gate18/pass_rate_3y_under_gate"].value == pytest.approx(people_passing(far)[0])
    assert metrics["gate18/adult_false_rejection"].value == pytest.approx((~passes[~minors]).mean())
    year20 = np.floor(frame["age"]) == 20
    row = per_year[per_year["true_age"] == 20].iloc[0]
    assert row["kind"] == "false rejection" and row["rate"] == pytest.approx((~passes[year20]).mean())
    challenge = frame["expected_age"].to_numpy() >= 21
    assert metrics["gate18/challenge_age21/minor_pass_rate"].value == pytest.approx(challenge[minors].mean())
    zero = metrics["gate18/no_minor_pass_challenge_age"].value
    assert not (frame["expected_age"].to_numpy()[minors] >= zero).any()
    assert metrics["gate18/no_minor_pass_rate_bound"].value == pytest.approx(3 / minors.sum())


def test_band_test_matches_brute_force():
    frame = _age_frame(seed=1)
    metrics = band_test(frame)
    age, predicted = frame["age"].to_numpy(), frame["expected_age"].to_numpy()
    inside = [13 <= p < 17 for p in predicted]
    teen = [13 <= a < 17 for a in age]
    assert metrics["band13_16/in_band_rate"].value == pytest.approx(
        np.mean([i for i, t in zip(inside, teen, strict=True) if t])
    )
    assert metrics["band13_16/under13_in_band_rate"].value == pytest.approx(np.mean(np.array(inside)[age < 13]))


def test_metrics_undefined_on_the_data_are_not_measurable_with_a_reason():
    adults = _age_frame()
    adults = adults[adults["age"] >= 18]
    metrics, _ = age_metrics(adults, [18.0], 0.9, calibrated=True)
    assert not metrics["gate18/minor_pass_rate"].measurable
    assert metrics["gate18/minor_pass_rate"].text() == "not measurable: no people under 18 in this data"
    assert metrics["gate18/no_minor_pass_challenge_age"].text().startswith("not measurable:")


def test_subject_bootstrap_covers_the_truth_at_least_90_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = 0
    for draw in range(200):
        subject_effect = rng.normal(0, 1, 60)  # correlated images within a subject
        errors = np.abs(np.repeat(subject_effect, 3) + rng.normal(0, 1, 180))
        subjects = np.repeat(np.arange(60), 3)
        estimate = subject_bootstrap(lambda r, e=errors: float(e[r].mean()), subjects, "x", n_resamples=300, seed=draw)
        true_mean = np.sqrt(2) * np.sqrt(2 / np.pi)  # E|N(0, 2)|
        covered += estimate.low <= true_mean <= estimate.high
    assert covered >= 180


def test_content_metrics_match_references():
    rng = np.random.default_rng(0)
    n, classes = 900, ["safe", "suggestive", "explicit"]
    labels = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3)) + 2.0 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    frame = pd.DataFrame(
        {
            "label": labels,
            "subject_id": [f"s{i // 3}" for i in range(n)],
            **{f"p_{c}": probs[:, i] for i, c in enumerate(classes)},
            "unsafe_score": probs[:, 1:].sum(1),
            "block_recall_explicit": probs[:, 2] >= 0.2,
        }
    )
    metrics, tables = content_metrics(
        frame,
        classes,
        ["suggestive", "explicit"],
        base_rate=0.005,
        points={"recall_explicit": ("explicit", "label")},
        calibrated=True,
    )
    positives, negatives = probs[labels == 2, 2], probs[labels != 2, 2]
    brute_auc = np.mean([[p > q for q in negatives] for p in positives])
    assert metrics["explicit/auroc"].value == pytest.approx(brute_auc, abs=1e-6)
    assert metrics["accuracy"].value == pytest.approx((probs.argmax(1) == labels).mean())
    flagged = probs[:, 2] >= 0.2
    recall, fpr = flagged[labels == 2].mean(), flagged[labels != 2].mean()
    scenes = frame["subject_id"].to_numpy()
    explicit_scenes = set(scenes[labels == 2])
    caught = [s for s in explicit_scenes if flagged[(scenes == s) & (labels == 2)].all()]  # every explicit frame
    assert metrics["recall_explicit/recall"].value == pytest.approx(len(caught) / len(explicit_scenes))
    assert metrics["recall_explicit/false_alarm_rate"].value == pytest.approx(fpr)
    assert metrics["recall_explicit/precision_at_base_rate"].value == pytest.approx(
        recall * 0.005 / (recall * 0.005 + fpr * 0.995)
    )
    assert tables["confusion_matrix"].to_numpy().sum() == n
    unsafe = labels > 0
    threshold_fpr = [
        ((probs[:, 1:].sum(1) >= t) & ~unsafe).sum() / (~unsafe).sum() for t in np.sort(probs[:, 1:].sum(1))
    ]
    assert metrics["unsafe/false_alarm_rate_at_recall0.95"].value <= max(threshold_fpr)


def test_fairness_flags_an_injected_disparity_and_not_parity():
    frame = _age_frame(n=2000, seed=3)
    frame.loc[frame["sex"] == "male", "expected_age"] += 4.0  # males are read as 4 years older
    frame["block_gate18"] = frame["expected_age"] < 18
    functions = {
        "gate18/minor_pass_rate": lambda f: proportion(
            ~f["block_gate18"].to_numpy()[f["age"].to_numpy() < 18], "minors"
        )
    }
    overall = {name: fn(frame) for name, fn in functions.items()}
    table = fairness_table(frame, ["sex"], functions, overall).set_index("value")
    assert table.loc["male", "flagged"] and table.loc["male", "versus overall"] == "worse than overall"
    # Females are then read as younger than overall: their pass rate is lower, which is better, not a harm.
    assert not table.loc["female", "flagged"] and table.loc["female", "versus overall"] == "better than overall"
    fair = _age_frame(n=2000, seed=4)
    fair["block_gate18"] = fair["expected_age"] < 18
    table = fairness_table(fair, ["sex"], functions, {n: fn(fair) for n, fn in functions.items()})
    assert not table["flagged"].any()


def test_the_harmful_direction_depends_on_the_metric():
    """For MAE higher is worse: a group with larger errors is flagged, one with smaller errors is not."""
    from evaluation.age import mae

    frame = _age_frame(n=2000, seed=6)
    female = frame["sex"] == "female"
    above = frame["expected_age"] > frame["age"]
    frame.loc[female, "expected_age"] += np.where(above[female], 3.0, -3.0)  # errors 3 years larger
    table = fairness_table(frame, ["sex"], {"mae": mae}, {"mae": mae(frame)}).set_index("value")
    assert table.loc["female", "flagged"] and table.loc["female", "versus overall"] == "worse than overall"
    assert not table.loc["male", "flagged"] and table.loc["male", "versus overall"] == "better than overall"


def test_disparity_ratio_has_an_interval_around_the_true_ratio():
    frame = _age_frame(n=1200, seed=5)
    frame.loc[frame["sex"] == "male", "expected_age"] += np.random.default_rng(0).normal(
        0, 6, (frame["sex"] == "male").sum()
    )
    errors = (frame["expected_age"] - frame["age"]).abs().to_numpy()
    estimate = disparity_ratio(frame, "sex", lambda rows: float(errors[rows].mean()))
    assert estimate.low <= estimate.value <= estimate.high and estimate.value > 1.3
    assert disparity_ratio(frame, "skin_tone_bin", lambda rows: 1.0).text().startswith("not measurable")


def test_error_table_and_interval_coverage_match_brute_force():
    from evaluation.age import error_table, interval_metrics

    frame = _age_frame(seed=6)
    table = error_table(frame).set_index("true_age")
    ten = frame[np.floor(frame["age"]) == 10]
    errors = ten["expected_age"] - ten["age"]
    assert table.loc["10", "n"] == len(ten)
    assert table.loc["10", "mae"] == pytest.approx(errors.abs().mean())
    assert table.loc["10", "bias"] == pytest.approx(errors.mean())
    assert table.loc["10", "within_5y"] == pytest.approx((errors.abs() <= 5).mean())
    assert table.loc["10", "p95_abs_error"] == pytest.approx(np.percentile(errors.abs(), 95))
    inside = [
        lo <= a <= hi for a, lo, hi in zip(frame["age"], frame["interval_low"], frame["interval_high"], strict=True)
    ]
    assert interval_metrics(frame, 0.9)["interval90/coverage"].value == pytest.approx(np.mean(inside))
    assert (
        interval_metrics(frame.drop(columns=["interval_low", "interval_high"]), 0.9)["interval90/coverage"]
        .text()
        .startswith("not measurable")
    )


def test_near_gate_years_get_their_own_per_person_pass_rate():
    """Pooled minor pass rates hide the years just below a gate; each gets its own figure, counted per person."""
    frame = _age_frame()
    metrics, _ = age_metrics(frame, [18.0], 0.9, calibrated=True, near_gate={18.0: [15, 16, 17]})
    passes = ~frame["block_gate18"].to_numpy()
    for year in (15, 16, 17):
        members = (np.floor(frame["age"]) == year).to_numpy()
        per_person = pd.Series(passes[members]).groupby(frame["subject_id"].to_numpy()[members]).any()
        estimate = metrics[f"gate18/pass_rate_age{year}"]
        assert estimate.value == pytest.approx(per_person.mean())
        assert estimate.low <= estimate.value <= estimate.high
    assert "gate18/pass_rate_age14" not in metrics
