"""Age metrics as NIST's age-estimation evaluation defines them, on a per-sample predictions frame.

The frame has one row per image: `age` (truth), `expected_age`, `subject_id`, attribute columns,
and where a calibration exists `p_below_<T>`, `block_gate<T>` (the operating-point decision) and
`interval_low` / `interval_high`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from calibration.metrics import binary_scores, score_name
from calibration.operating_points import row_units
from evaluation.stats import Estimate, bare, not_measurable, proportion, subject_mean, subject_rate, unit_proportion

EXACT_AGES = range(26)
BUCKETS = [(26, 35), (36, 50), (51, 65), (66, 200)]
BAND = (13.0, 17.0)  # NIST's child-safety band: true ages 13-16 (years 13.0 to 16.99)


def mean_absolute_error(predicted: np.ndarray, age: np.ndarray, subjects: np.ndarray) -> Estimate:
    """MAE over images, its interval resampling subjects: the one definition evaluate, its fairness
    slices, the contract's headline and the contract's slices all report."""
    errors = np.abs(np.asarray(predicted, dtype=np.float64) - np.asarray(age, dtype=np.float64))
    return subject_mean(errors, subjects, "samples")


def mae(frame: pd.DataFrame) -> Estimate:
    return mean_absolute_error(frame["expected_age"], frame["age"], row_units(frame))


def error_table(frame: pd.DataFrame) -> pd.DataFrame:
    """MAE, signed bias, P95 |error| and the share within 5 years (CS@5) per integer true age 0-25, then per bucket."""
    frame = frame.assign(error=frame["expected_age"] - frame["age"])
    groups = [(str(a), frame[np.floor(frame["age"]) == a]) for a in EXACT_AGES]
    groups += [
        (f"{lo}-{hi if hi < 200 else '+'}", frame[(frame["age"] >= lo) & (frame["age"] < hi + 1)]) for lo, hi in BUCKETS
    ]
    rows = []
    for label, part in groups:
        error = part["error"]
        rows.append(
            {
                "true_age": label,
                "n": len(part),
                "mae": error.abs().mean() if len(part) else np.nan,
                "bias": error.mean() if len(part) else np.nan,
                "p95_abs_error": error.abs().quantile(0.95) if len(part) else np.nan,
                "within_5y": (error.abs() <= 5).mean() if len(part) else np.nan,
                "interval_coverage": interval_coverage(part).value if len(part) else np.nan,
                "interval_width": (part["interval_high"] - part["interval_low"]).mean()
                if "interval_low" in part and len(part)
                else np.nan,
            }
        )
    return pd.DataFrame(rows)


def minor_pass_rate(frame: pd.DataFrame, gate: float, decision: str, members: np.ndarray | None = None) -> Estimate:
    """Share of people under `gate` (among `members`) that `decision` lets through on any image.

    Per person with an exact interval, as the contract's certificate counts them (`unit_proportion`).
    """
    chosen = (frame["age"].to_numpy() < gate) & (True if members is None else members)
    passes = ~frame[decision].to_numpy(dtype=bool)
    return unit_proportion(passes[chosen], row_units(frame)[chosen], f"people under {gate:g}")


def gate_analysis(
    frame: pd.DataFrame, gate: float, *, calibrated: bool, years_after: int = 8
) -> tuple[dict[str, Estimate], pd.DataFrame]:
    """Pass and false-rejection rates at the operating point, per age year, and at challenge ages T..T+7.

    Pass rates at the operating point count people (any image passing), as the contract does;
    false rejections are shares of images with a subject-bootstrap interval, as the contract's
    false-alarm rate is; challenge-age rates are shares of images. `calibrated` says whether
    `p_below_<T>` is calibrated; its ECE and Brier are named accordingly.
    """
    key, metrics, rows = f"gate{gate:g}", {}, []
    age, predicted = frame["age"].to_numpy(), frame["expected_age"].to_numpy()
    minors, adults = age < gate, age >= gate
    decision = f"block_{key}"
    if decision in frame:
        rejected, units = frame[decision].to_numpy(dtype=bool), row_units(frame)
        metrics[f"{key}/minor_pass_rate"] = minor_pass_rate(frame, gate, decision)
        metrics[f"{key}/pass_rate_3y_under_gate"] = minor_pass_rate(frame, gate, decision, age <= gate - 3)
        metrics[f"{key}/adult_false_rejection"] = subject_rate(
            rejected[adults], units[adults], f"people aged {gate:g} or more"
        )
        for year in range(0, int(gate) + years_after):
            in_year = np.floor(age) == year
            minor = year < gate
            rate = (
                minor_pass_rate(frame, gate, decision, in_year)
                if minor
                else subject_rate(rejected[in_year], units[in_year], f"people aged {year}")
            )
            rows.append(
                {
                    "true_age": year,
                    "kind": "minor pass" if minor else "false rejection",
                    "rate": rate.value,
                    "low": rate.low,
                    "high": rate.high,
                    "n": rate.n,
                    "unit": "people" if minor else "images",
                }
            )
    else:
        metrics[f"{key}/minor_pass_rate"] = not_measurable("no calibration, so no operating point to judge")
    for challenge in range(int(gate), int(gate) + years_after):
        passes = predicted >= challenge
        metrics[f"{key}/challenge_age{challenge}/minor_pass_rate"] = proportion(
            passes[minors], f"people under {gate:g}"
        )
        metrics[f"{key}/challenge_age{challenge}/adult_false_rejection"] = proportion(
            ~passes[adults], f"people aged {gate:g} or more"
        )
    if minors.any():
        zero_error = float(np.nextafter(predicted[minors].max(), np.inf))
        metrics[f"{key}/no_minor_pass_challenge_age"] = Estimate(zero_error, n=int(minors.sum()))
        # No minor passes at that age in this sample; the rule of three bounds the true rate by 3/n (95%).
        metrics[f"{key}/no_minor_pass_rate_bound"] = Estimate(3.0 / minors.sum(), n=int(minors.sum()))
    else:
        metrics[f"{key}/no_minor_pass_challenge_age"] = not_measurable(f"no people under {gate:g} in this data")
    probability = f"p_below_{gate:g}"
    if probability in frame and minors.any() and adults.any():
        scores = binary_scores(frame[probability].to_numpy(np.float64), minors)
        for score in ("ece", "brier"):
            metrics[f"{key}/{score_name(score, calibrated)}"] = bare(scores[score], len(age), f"{score} undefined")
    return metrics, pd.DataFrame(rows)


def band_test(frame: pd.DataFrame) -> dict[str, Estimate]:
    """NIST 13-16 band: how often 13-16-year-olds are placed in the band, and others wrongly placed in it."""
    age, predicted = frame["age"].to_numpy(), frame["expected_age"].to_numpy()
    inside = (predicted >= BAND[0]) & (predicted < BAND[1])
    return {
        "band13_16/in_band_rate": proportion(inside[(age >= BAND[0]) & (age < BAND[1])], "people aged 13-16"),
        "band13_16/under13_in_band_rate": proportion(inside[age < BAND[0]], "people under 13"),
        "band13_16/17plus_in_band_rate": proportion(inside[age >= BAND[1]], "people aged 17 or more"),
    }


def interval_coverage(frame: pd.DataFrame) -> Estimate:
    """Share of true ages inside their conformal interval (the fairness slices reuse it per group)."""
    if "interval_low" not in frame:
        return not_measurable("no calibration, so no conformal intervals")
    inside = ((frame["age"] >= frame["interval_low"]) & (frame["age"] <= frame["interval_high"])).to_numpy()
    return proportion(inside, "samples")


def interval_metrics(frame: pd.DataFrame, coverage: float) -> dict[str, Estimate]:
    name = f"interval{round(coverage * 100)}"
    metrics = {f"{name}/coverage": interval_coverage(frame)}
    if "interval_low" in frame:
        width = (frame["interval_high"] - frame["interval_low"]).to_numpy()
        metrics[f"{name}/width"] = bare(width.mean(), len(width), "no samples")
    return metrics


def age_metrics(
    frame: pd.DataFrame,
    gates: list[float],
    coverage: float,
    *,
    calibrated: bool,
    near_gate: dict[float, list[int]] | None = None,
) -> tuple[dict[str, Estimate], dict]:
    """`near_gate` names, per gate, the years just below it whose pass rates get their own metric."""
    metrics: dict[str, Estimate] = {"mae": mae(frame)}
    errors = frame["expected_age"] - frame["age"]
    metrics["bias"] = bare(errors.mean(), len(frame), "no samples")
    metrics["p95_abs_error"] = bare(errors.abs().quantile(0.95), len(frame), "no samples")
    metrics["within_5y_rate"] = proportion((errors.abs() <= 5).to_numpy(), "samples")
    tables = {"error_by_age": error_table(frame)}
    for gate in gates:
        gate_metrics, per_year = gate_analysis(frame, gate, calibrated=calibrated)
        metrics |= gate_metrics
        for year in (near_gate or {}).get(gate, []):
            metrics[f"gate{gate:g}/pass_rate_age{year}"] = minor_pass_rate(
                frame, gate, f"block_gate{gate:g}", np.floor(frame["age"].to_numpy()) == year
            )
        tables[f"gate{gate:g}_by_age"] = per_year
    metrics |= band_test(frame) | interval_metrics(frame, coverage)
    return metrics, tables
