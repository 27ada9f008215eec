"""Every MLflow metric key the stages log, with its unit, the runs that log it and what it means.

One table serves the docs (`docs/metric-glossary.md` is rendered from it), evaluate's metrics table
(unit and meaning beside each value) and the tests that fail when a stage logs a key it does not
define. A key matches exactly one entry, and a key several stages log means the same in each.

`python -m evaluation.glossary > docs/metric-glossary.md` rewrites the page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # compare reads the table without scipy, which evaluation.stats imports
    from evaluation.stats import Estimate

PLACEHOLDERS = {
    "task": r"(?:age|content)",
    "split": r"(?:calib|test)",
    "gate": r"\d+",
    "age": r"\d+",
    "pct": r"\d+",
    "share": r"[0-9.]+",
    "label": r"[a-z][a-z0-9_]*",
    "class": r"(?!recall_)[a-z][a-z0-9_]*",  # a class name; operating points are named recall_<label>
    "attribute": r"[a-z][a-z0-9_]*",
    "group": r"[a-z][a-z0-9_]*",
    "output": r"[a-z][a-z0-9_]*",
    "when": r"(?:before|after)",
    "score": r"(?:ece|brier)",
    "seconds": r"\d+(?:\.\d+)?",
    "policy": r"(?:|/k3_of_5|/no_smoothing)",  # the chosen stream policy, or a fixed rule it is compared with
    "seen": r"(?:frame|frames\d+)",  # one frame, or a whole stream of that many frames
    "rate": r"(?:minor_pass_rate|adult_false_rejection)",
}


@dataclass(frozen=True)
class Entry:
    pattern: str  # the key with {placeholders} (PLACEHOLDERS)
    unit: str
    stages: tuple[str, ...]  # the runs that log it: train, calibrate, evaluate, export
    meaning: str

    @property
    def regex(self) -> re.Pattern:
        parts = re.split(r"\{(\w+)\}", self.pattern)
        return re.compile(
            "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{PLACEHOLDERS[p]})" for i, p in enumerate(parts))
        )


TRAIN, CALIBRATE, EVALUATE, EXPORT = ("train",), ("calibrate",), ("evaluate",), ("export",)
SHARE = "share (0-1)"
PEOPLE = "share of people (0-1)"
SCENES = "share of scenes (0-1)"
IMAGES = "share of images (0-1)"

GLOSSARY: tuple[Entry, ...] = (
    # Training (Lightning's MLflow logger, per step or epoch).
    Entry("epoch", "epochs", TRAIN, "The epoch each logged step belongs to (Lightning logs it beside every key)."),
    Entry("lr-AdamW", "learning rate", TRAIN, "The optimiser's learning rate, one parameter group."),
    Entry("lr-AdamW/{group}", "learning rate", TRAIN, "The learning rate of one parameter group (backbone, head)."),
    Entry("train/{task}/loss", "the head's loss", TRAIN, "Training loss per step, with augmentation."),
    Entry("train/{task}/samples", "images", TRAIN, "Training images seen so far."),
    Entry("train/{task}/fit_seconds", "seconds", TRAIN, "Wall time of the fit, logged once at its last step."),
    Entry("val/{task}/loss", "the head's loss", TRAIN, "Validation loss per epoch."),
    Entry("test/{task}/loss", "the head's loss", TRAIN, "Loss on the test split with the best checkpoint."),
    Entry("val/age/mae", "years", TRAIN, "Mean absolute error of the predicted age on the val split."),
    Entry(
        "test/age/mae",
        "years",
        (*TRAIN, *EVALUATE, *EXPORT),
        "Mean absolute error of the predicted age on the test split, over images. Calibration never moves the "
        "predicted age, so train, evaluate and the contract's headline agree.",
    ),
    Entry("val/age/gate{gate}/auroc", "AUROC (0-1)", TRAIN, "How well P(age < gate) ranks minors above adults (val)."),
    Entry("test/age/gate{gate}/auroc", "AUROC (0-1)", TRAIN, "The same on the test split, uncalibrated."),
    Entry(
        "val/age/gate{gate}/brier_uncalibrated",
        "Brier (0-1)",
        TRAIN,
        "Brier score of the network's P(age < gate) before calibration (val).",
    ),
    Entry(
        "test/age/gate{gate}/brier_uncalibrated",
        "Brier (0-1)",
        (*TRAIN, *EVALUATE),
        "Brier score of the network's P(age < gate) on test, before calibration (evaluate without a calibration).",
    ),
    Entry(
        "test/age/gate{gate}/ece_uncalibrated",
        "ECE (0-1)",
        EVALUATE,
        "Expected calibration error of the uncalibrated P(age < gate) on test (evaluate without a calibration).",
    ),
    Entry("test/age/baseline_mae", "years", TRAIN, "MAE of always predicting the training split's median age."),
    Entry("val/content/accuracy", SHARE, TRAIN, "Top-1 accuracy on the val split, over images."),
    Entry(
        "test/content/accuracy",
        SHARE,
        (*TRAIN, *EVALUATE, *EXPORT),
        "Top-1 accuracy on the test split, over images. Calibration keeps the top class, so train, evaluate and the "
        "contract's headline agree.",
    ),
    Entry("val/content/auroc", "AUROC (0-1)", TRAIN, "Macro one-vs-rest AUROC of the network's probabilities (val)."),
    Entry("test/content/auroc", "AUROC (0-1)", TRAIN, "The same on the test split, uncalibrated."),
    Entry("val/content/ece_uncalibrated", "ECE (0-1)", TRAIN, "Top-label ECE of the network's probabilities (val)."),
    Entry(
        "test/content/ece_uncalibrated",
        "ECE (0-1)",
        (*TRAIN, *EVALUATE),
        "Top-label ECE of the uncalibrated probabilities on test.",
    ),
    Entry("test/content/baseline_accuracy", SHARE, TRAIN, "Accuracy of always predicting the commonest class."),
    Entry(
        "data/age/bayes_mae",
        "years",
        TRAIN,
        "The synthetic data's floor: the MAE of the best possible predictor given its apparent-age noise.",
    ),
    Entry("data/content/bayes_accuracy", SHARE, TRAIN, "The synthetic data's ceiling: 1 - its label-flip probability."),
    # Calibration: fitted on calib, measured on calib and test.
    Entry("calib/age/temperature", "temperature", CALIBRATE, "The fitted temperature of the age distribution."),
    # The content stream policy (calibration/streams.py), chosen on calib streams, measured on both.
    Entry("calib/content/stream/k", "frames", CALIBRATE, "The chosen k-of-n policy's k: blocking votes needed."),
    Entry("calib/content/stream/n", "frames", CALIBRATE, "The chosen k-of-n policy's n: the window, in frames."),
    Entry(
        "calib/content/stream/recall_lower_bound",
        "share of streams (0-1)",
        CALIBRATE,
        "One-sided Clopper-Pearson lower bound on the share of calib event streams blocked within the certified "
        "deadline (calibration.streams.content.deadline_s).",
    ),
    Entry(
        "{split}/content/stream{policy}/recall_within_{seconds}s",
        "share of streams (0-1)",
        CALIBRATE,
        "Share of streams with an explicit event blocked within that many seconds of its onset, for the chosen "
        "policy (no suffix) or the fixed 3-of-5 and no smoothing (test only).",
    ),
    Entry(
        "{split}/content/stream{policy}/interruptions_per_hour",
        "interruptions per hour",
        CALIBRATE,
        "Blocks that start outside an event (and over n frames after one ends), per hour of benign stream.",
    ),
    Entry(
        "test/age/stream/gate{gate}/{seen}/minor_pass_rate",
        "share of people (0-1)",
        CALIBRATE,
        "Share of test streams of people under the gate judged adult, on their first frame at the per-frame "
        "threshold (frame) or on the mean logit of all their frames at the threshold matching the per-frame adult "
        "false rejection on calib (framesN); a measurement, not the runtime's policy.",
    ),
    Entry(
        "test/age/stream/gate{gate}/{seen}/adult_false_rejection",
        "share of people (0-1)",
        CALIBRATE,
        "Share of test streams of people at or over the gate judged under it, as for minor_pass_rate.",
    ),
    Entry(
        "test/age/stream/gate{gate}/frames_needed",
        "frames",
        CALIBRATE,
        "Fewest frames whose per-stream minor pass rate (at the matched false rejection) is at most "
        "calibration.age.max_minor_pass_rate; logged only when some stream length reaches it.",
    ),
    Entry(
        "calib/age/stream_policy/n",
        "frames",
        CALIBRATE,
        "The certified age stream policy's window: the mean logit P(age < T) over a stream's last n decided frames; "
        "a stream is held under every gate until n frames are decided.",
    ),
    Entry(
        "calib/age/stream_policy/gate{gate}/pass_rate_upper_bound",
        "share of people (0-1)",
        CALIBRATE,
        "One-sided Clopper-Pearson upper bound on the share of calib people under the gate whose stream passed "
        "at any window; certified at most calibration.streams.age.max_minor_pass_rate.",
    ),
    Entry(
        "test/age/stream_policy/gate{gate}/{rate}",
        "share of people (0-1)",
        CALIBRATE,
        "The runtime's age stream policy on test streams: people under the gate whose stream passed at any window "
        "(minor_pass_rate), or people at or over it still held under it on the last frame (adult_false_rejection).",
    ),
    Entry(
        "{split}/content/stream{policy}/time_to_block_p{pct}_s",
        "seconds",
        CALIBRATE,
        "That quantile of seconds from an event's onset to the stream's first block in it; logged only when finite.",
    ),
    Entry(
        "{split}/age/gate{gate}/{score}_{when}",
        "ECE or Brier (0-1)",
        CALIBRATE,
        "ECE or Brier score of P(age < gate) before or after calibration, on the split named first.",
    ),
    Entry(
        "calib/age/gate{gate}/threshold",
        "probability",
        CALIBRATE,
        "The operating point: block when P(age < gate) is at least this.",
    ),
    Entry(
        "calib/age/gate{gate}/certified_subjects",
        "people",
        CALIBRATE,
        "Calib people under the gate behind the certificate.",
    ),
    Entry(
        "calib/age/gate{gate}/minor_pass_rate_upper_bound",
        PEOPLE,
        CALIBRATE,
        "The certificate: the one-sided upper confidence bound on the share of minors the point lets through.",
    ),
    Entry(
        "calib/age/gate{gate}/challenge_age",
        "years",
        CALIBRATE,
        "The predicted age that alone would meet the same target: a challenge-25-style rule, for comparison.",
    ),
    Entry(
        "{split}/{task}/ood_abstention_rate",
        IMAGES,
        CALIBRATE,
        "Images whose out-of-distribution score exceeds the fitted threshold, so the model abstains.",
    ),
    Entry(
        "{split}/content/{label}_{when}",
        "accuracy, ECE, Brier or NLL",
        CALIBRATE,
        "A multiclass score (accuracy, ece, brier, nll) of the probabilities before or after calibration, or "
        "the unsafe score's (unsafe_ece, unsafe_brier).",
    ),
    Entry(
        "calib/content/recall_{label}/threshold",
        "score",
        CALIBRATE,
        "The operating point: flag when the label's calibrated score is at least this.",
    ),
    Entry(
        "calib/content/recall_{label}/certified_scenes",
        "scenes",
        CALIBRATE,
        "Calib scenes with the label behind the certificate.",
    ),
    Entry(
        "calib/content/recall_{label}/recall_lower_bound",
        SCENES,
        CALIBRATE,
        "The certificate: the one-sided lower confidence bound on the share of scenes the point catches.",
    ),
    Entry(
        "test/age/gate{gate}/minor_pass_rate",
        PEOPLE,
        (*CALIBRATE, *EVALUATE),
        "At the operating point, the share of test people under the gate let through on any of their images: the "
        "miss rate the certificate bounds.",
    ),
    Entry(
        "test/age/gate{gate}/minor_pass_rate_ci_high",
        PEOPLE,
        (*CALIBRATE, *EVALUATE),
        "The upper end of that rate's exact 95% interval (the gate's headline bound).",
    ),
    Entry(
        "test/age/gate{gate}/adult_false_rejection",
        IMAGES,
        (*CALIBRATE, *EVALUATE),
        "At the operating point, the share of test images of people at or over the gate that are blocked.",
    ),
    Entry(
        "test/age/gate{gate}/pass_rate_age{age}",
        PEOPLE,
        (*CALIBRATE, *EVALUATE),
        "At the operating point, the share of test people of that age (just under the gate) let through.",
    ),
    Entry(
        "test/age/gate{gate}/false_rejection_age{age}",
        IMAGES,
        CALIBRATE,
        "At the operating point, the share of test images of people of that age (at or over the gate) blocked.",
    ),
    Entry(
        "test/age/gate{gate}/precision_at_base_rate",
        SHARE,
        CALIBRATE,
        "Of the people blocked in live traffic with calibration.age.base_rate minors, the share who are minors.",
    ),
    Entry(
        "test/{task}/{label}/degenerate",
        "flag (0 or 1)",
        CALIBRATE,
        "1 when the point flags more negatives than calibration.max_false_alarm_rate: export refuses it.",
    ),
    Entry(
        "test/age/interval{pct}/coverage",
        IMAGES,
        (*CALIBRATE, *EVALUATE),
        "Test images whose true age lies inside the conformal interval built for that coverage.",
    ),
    Entry("test/age/interval{pct}/width", "years", (*CALIBRATE, *EVALUATE), "Mean width of those intervals."),
    Entry(
        "test/age/interval{pct}/{group}/coverage",
        IMAGES,
        CALIBRATE,
        "The interval coverage within one Mondrian group (calibration.age.mondrian).",
    ),
    Entry("test/age/interval{pct}/{group}/count", "images", CALIBRATE, "Test images in that Mondrian group."),
    Entry(
        "test/content/recall_{label}/recall",
        SCENES,
        (*CALIBRATE, *EVALUATE),
        "At the operating point, the share of test scenes with the label flagged on any of their frames.",
    ),
    Entry(
        "test/content/recall_{label}/recall_ci_low",
        SCENES,
        EVALUATE,
        "The lower end of that recall's exact 95% interval (the point's headline bound).",
    ),
    Entry(
        "test/content/recall_{label}/false_alarm_rate",
        IMAGES,
        (*CALIBRATE, *EVALUATE),
        "At the operating point, the share of test images without the label that are flagged.",
    ),
    Entry(
        "test/content/recall_{label}/precision_at_base_rate",
        SHARE,
        (*CALIBRATE, *EVALUATE),
        "Of the frames flagged in live traffic with evaluation.base_rate unsafe frames, the share that are unsafe.",
    ),
    # Evaluation on the test split (values; their intervals are in evaluation/metrics.json).
    Entry("test/age/bias", "years", EVALUATE, "Mean signed error, predicted minus true age."),
    Entry("test/age/p95_abs_error", "years", EVALUATE, "95th percentile of the absolute error."),
    Entry("test/age/within_5y_rate", IMAGES, EVALUATE, "Images whose predicted age is within 5 years (CS@5)."),
    Entry(
        "test/age/gate{gate}/pass_rate_3y_under_gate",
        PEOPLE,
        EVALUATE,
        "At the operating point, the share of people 3 or more years under the gate let through.",
    ),
    Entry(
        "test/age/gate{gate}/challenge_age{age}/minor_pass_rate",
        IMAGES,
        EVALUATE,
        "With the rule 'pass when the predicted age is at least this challenge age', the share of images of "
        "people under the gate that pass.",
    ),
    Entry(
        "test/age/gate{gate}/challenge_age{age}/adult_false_rejection",
        IMAGES,
        EVALUATE,
        "With the same rule, the share of images of people at or over the gate rejected.",
    ),
    Entry(
        "test/age/gate{gate}/no_minor_pass_challenge_age",
        "years",
        EVALUATE,
        "The lowest challenge age at which no test minor passes.",
    ),
    Entry(
        "test/age/gate{gate}/no_minor_pass_rate_bound",
        PEOPLE,
        EVALUATE,
        "The rule-of-three 95% bound (3/n) on the minor pass rate at that challenge age.",
    ),
    Entry(
        "test/age/gate{gate}/{score}",
        "ECE or Brier (0-1)",
        EVALUATE,
        "ECE or Brier score of the calibrated P(age < gate) on test.",
    ),
    Entry(
        "test/age/band13_16/in_band_rate",
        IMAGES,
        EVALUATE,
        "NIST's band test: images of people aged 13-16 whose predicted age is in 13-16.",
    ),
    Entry(
        "test/age/band13_16/under13_in_band_rate",
        IMAGES,
        EVALUATE,
        "Images of people under 13 wrongly placed in 13-16.",
    ),
    Entry(
        "test/age/band13_16/17plus_in_band_rate",
        IMAGES,
        EVALUATE,
        "Images of people 17 or older wrongly placed in 13-16.",
    ),
    Entry(
        "test/age/disparity/{attribute}/mae_ratio",
        "ratio (>= 1)",
        EVALUATE,
        "Largest over smallest MAE across the attribute's groups.",
    ),
    Entry(
        "test/{task}/fairness/flagged_slices",
        "slices",
        EVALUATE,
        "Slices whose 95% interval lies wholly on the harmful side of the overall value.",
    ),
    Entry("test/content/ece", "ECE (0-1)", EVALUATE, "Top-label ECE of the calibrated probabilities on test."),
    Entry("test/content/macro_auroc", "AUROC (0-1)", EVALUATE, "Macro one-vs-rest AUROC, calibrated probabilities."),
    Entry("test/content/macro_pr_auc", "PR-AUC (0-1)", EVALUATE, "Mean over classes of average precision."),
    Entry("test/content/{class}/precision", IMAGES, EVALUATE, "Of images whose top class is this, the share that are."),
    Entry("test/content/{class}/recall", IMAGES, EVALUATE, "Of images of this class, the share whose top class it is."),
    Entry("test/content/{class}/auroc", "AUROC (0-1)", EVALUATE, "One-vs-rest AUROC of this class's probability."),
    Entry("test/content/{class}/pr_auc", "PR-AUC (0-1)", EVALUATE, "Average precision of this class's probability."),
    Entry(
        "test/content/unsafe/recall_at_false_alarm_rate{share}",
        IMAGES,
        EVALUATE,
        "Recall of unsafe images when the unsafe score's threshold flags that share of safe images.",
    ),
    Entry(
        "test/content/unsafe/false_alarm_rate_at_recall{share}",
        IMAGES,
        EVALUATE,
        "Share of safe images flagged when the threshold catches that share of unsafe images.",
    ),
    Entry(
        "test/content/disparity/{attribute}/accuracy_ratio",
        "ratio (>= 1)",
        EVALUATE,
        "Largest over smallest accuracy across the attribute's groups.",
    ),
    # Export: the parity gate.
    Entry(
        "export/{task}/parity_max_abs_diff/{output}",
        "the output's unit",
        EXPORT,
        "Largest absolute difference between the ONNX graph and the PyTorch reference on that output.",
    ),
)


@cache
def _compiled() -> tuple[tuple[re.Pattern, Entry], ...]:
    return tuple((entry.regex, entry) for entry in GLOSSARY)


def entries_for(key: str) -> list[Entry]:
    """Every entry whose pattern matches the whole key: exactly one for a key the glossary defines."""
    return [entry for regex, entry in _compiled() if regex.fullmatch(key)]


def lookup(key: str) -> Entry | None:
    """The key's entry, or None when none or several match (the tests refuse both)."""
    found = entries_for(key)
    return found[0] if len(found) == 1 else None


METRICS_TABLE = "evaluation/metrics.json"  # evaluate's every figure with its interval, unit and meaning
# The interval ends that stay MLflow metrics beside their values: each operating point's headline bound.
HEADLINE_BOUNDS = {re.compile(r".*/gate\d+/minor_pass_rate"): "ci_high", re.compile(r".*/recall_\w+/recall"): "ci_low"}


def metrics_table(estimates: dict[str, Estimate]) -> pd.DataFrame:
    """One row per logged key: value, 95% interval, count, unit, meaning, and the reason for a missing value."""
    rows = []
    for key, estimate in estimates.items():
        entry = lookup(key)
        rows.append(
            {
                "metric": key,
                "value": estimate.value if estimate.measurable else None,
                "ci_low": estimate.low,
                "ci_high": estimate.high,
                "n": estimate.n,
                "unit": entry.unit if entry else "",
                "meaning": entry.meaning if entry else "",
                "reason": "" if estimate.measurable else estimate.reason,
            }
        )
    return pd.DataFrame(rows, columns=["metric", "value", "ci_low", "ci_high", "n", "unit", "meaning", "reason"])


def metric_values(table: pd.DataFrame) -> tuple[dict[str, float], dict[str, str]]:
    """What MLflow gets as metrics: every measured value and the headline bounds; the rest's reasons."""
    numbers, unmeasured = {}, {}
    for row in table.itertuples():
        if pd.isna(row.value):
            unmeasured[row.metric] = row.reason
            continue
        numbers[row.metric] = row.value
        for pattern, end in HEADLINE_BOUNDS.items():
            if pattern.fullmatch(row.metric) and not pd.isna(getattr(row, end)):
                numbers[f"{row.metric}_{end}"] = getattr(row, end)
    return numbers, unmeasured


def render() -> str:
    """The glossary page, grouped by the stage that logs each key first."""
    lines = [
        "# Metric glossary",
        "",
        "Every metric key the stages log to MLflow: its unit, which runs log it, and what it means. A key",
        "that several runs log means the same in each. Placeholders: `{task}` age or content, `{split}` calib",
        "or test, `{gate}` an age gate, `{age}` an age in years, `{pct}` an interval's coverage in percent,",
        "`{label}` a content label or score name, `{class}` a content class, `{attribute}` a slice attribute,",
        "`{group}` a parameter or Mondrian group, `{output}` a graph output, `{share}` a target share,",
        "`{when}` before or after calibration, `{score}` ece or brier.",
        "",
        "Evaluate logs values as metrics. Each value's 95% interval, its count, unit and meaning are in the",
        "evaluate run's table `evaluation/metrics.json`; only the operating points' headline bounds",
        "(`*/minor_pass_rate_ci_high`, `*/recall_ci_low`) are metrics too. [metrics.md](metrics.md) says how",
        "each figure and interval is computed.",
        "",
        "Generated from `evaluation/glossary.py` (`python -m evaluation.glossary > docs/metric-glossary.md`);",
        "a test fails when a stage logs a key this page does not define.",
        "",
        "| key | unit | logged by | meaning |",
        "|---|---|---|---|",
    ]
    lines += [f"| `{e.pattern}` | {e.unit} | {', '.join(e.stages)} | {e.meaning.replace('|', '/')} |" for e in GLOSSARY]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
