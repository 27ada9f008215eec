"""Content metrics on a per-sample frame: `label`, `p_<class>` columns, `unsafe_score`, `block_<point>`."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from calibration.metrics import multiclass_scores, score_name
from calibration.operating_points import precision_at, row_units
from evaluation.stats import (
    Estimate,
    bare,
    not_measurable,
    proportion,
    subject_bootstrap,
    subject_rate,
    unit_proportion,
)


def _recall_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    allowed = fpr <= target
    return float(tpr[allowed].max()) if allowed.any() else 0.0


def _fpr_at_recall(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    return float(fpr[tpr >= target].min())


def protected(labels: np.ndarray, target: str, classes: list[str], unsafe_classes: list[str]) -> np.ndarray:
    """Which samples an operating point must flag: its class, or any unsafe class for target "unsafe"."""
    names = np.asarray(classes)[labels]
    return np.isin(names, unsafe_classes) if target == "unsafe" else names == target


def point_outcomes(
    frame: pd.DataFrame, name: str, target: str, labels: str, classes: list[str], unsafe_classes: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Operating point `name`'s flags, its positives by `labels` (the manifest column its guarantee
    refers to, clean labels where the data has them), and each frame's scene."""
    positives = protected(frame[labels].to_numpy(), target, classes, unsafe_classes)
    return frame[f"block_{name}"].to_numpy(bool), positives, row_units(frame)


def point_recall(flagged: np.ndarray, positives: np.ndarray, units: np.ndarray) -> Estimate:
    """Share of positive scenes with every positive frame flagged: 1 - the contract's per-scene miss rate."""
    return unit_proportion(~flagged[positives], units[positives], "positive scenes").complement()


def accuracy(probabilities: np.ndarray, labels: np.ndarray, subjects: np.ndarray) -> Estimate:
    """Top-label accuracy over images, its interval resampling scenes (images of a scene are not
    independent): the one definition evaluate, its slices and the contract's headline report."""
    return subject_rate(np.asarray(probabilities).argmax(1) == np.asarray(labels), subjects, "samples")


def content_metrics(
    frame: pd.DataFrame,
    classes: list[str],
    unsafe_classes: list[str],
    base_rate: float,
    points: dict[str, tuple[str, str]],
    *,
    calibrated: bool,
) -> tuple[dict[str, Estimate], dict]:
    """`points` maps each operating point's name to what it protects and the label column its
    guarantee refers to (its `block_<name>` column flags). Its rates are the contract's: recall per
    scene, false alarms and precision at the base rate per frame.

    `calibrated` says whether the `p_<class>` columns are calibrated; the ECE is named accordingly.
    """
    labels = frame["label"].to_numpy()
    probs = frame[[f"p_{c}" for c in classes]].to_numpy(np.float64)
    subjects = row_units(frame)
    metrics: dict[str, Estimate] = {
        "accuracy": accuracy(probs, labels, subjects),
        score_name("ece", calibrated): bare(multiclass_scores(probs, labels)["ece"], len(labels), "ECE undefined"),
    }
    present = np.unique(labels)
    if present.size == len(classes):
        metrics["macro_auroc"] = subject_bootstrap(
            lambda r: (
                roc_auc_score(labels[r], probs[r], multi_class="ovr", labels=list(range(len(classes))))
                if np.unique(labels[r]).size == len(classes)
                else np.nan
            ),
            subjects,
            "samples",
            n_resamples=300,
        )
    else:
        metrics["macro_auroc"] = not_measurable(f"only classes {present.tolist()} occur in this data")
    precision, _, _, support = precision_recall_fscore_support(
        labels, probs.argmax(1), labels=range(len(classes)), zero_division=np.nan
    )
    for index, name in enumerate(classes):
        positive = labels == index
        if support[index] == 0 or positive.all():
            metrics[f"{name}/auroc"] = not_measurable(f"'{name}' is absent or alone in this data")
            continue
        metrics[f"{name}/precision"] = bare(precision[index], int(support[index]), f"nothing is predicted '{name}'")
        metrics[f"{name}/recall"] = proportion(probs.argmax(1)[positive] == index, f"'{name}' samples")
        metrics[f"{name}/auroc"] = Estimate(float(roc_auc_score(positive, probs[:, index])), n=len(labels))
        metrics[f"{name}/pr_auc"] = Estimate(float(average_precision_score(positive, probs[:, index])), n=len(labels))

    per_class_pr = [metrics[f"{c}/pr_auc"].value for c in classes if f"{c}/pr_auc" in metrics]
    metrics["macro_pr_auc"] = (
        Estimate(float(np.mean(per_class_pr)), n=len(labels))
        if len(per_class_pr) == len(classes)
        else not_measurable("PR-AUC needs every class present")
    )
    unsafe = protected(labels, "unsafe", classes, unsafe_classes)
    score = frame["unsafe_score"].to_numpy(np.float64)
    if unsafe.any() and (~unsafe).any():
        fpr, tpr, _ = roc_curve(unsafe, score)
        for target in (0.01, 0.001):
            metrics[f"unsafe/recall_at_false_alarm_rate{target:g}"] = Estimate(
                _recall_at_fpr(fpr, tpr, target), n=len(score)
            )
        for target in (0.95, 0.99):
            metrics[f"unsafe/false_alarm_rate_at_recall{target:g}"] = Estimate(
                _fpr_at_recall(fpr, tpr, target), n=len(score)
            )
    else:
        metrics["unsafe/recall_at_false_alarm_rate0.01"] = not_measurable("needs both safe and unsafe samples")
    for name, (target, label_column) in points.items():
        flagged, positives, units = point_outcomes(frame, name, target, label_column, classes, unsafe_classes)
        fpr = subject_rate(flagged[~positives], units[~positives], "negatives")
        metrics[f"{name}/recall"], metrics[f"{name}/false_alarm_rate"] = point_recall(flagged, positives, units), fpr
        if positives.any() and fpr.measurable:
            # What a reviewer sees in live traffic, where unsafe frames are rare.
            precision = precision_at(1 - float((~flagged[positives]).mean()), fpr.value, base_rate)  # image recall
            metrics[f"{name}/precision_at_base_rate"] = (
                not_measurable("nothing is flagged", len(labels))
                if precision is None
                else Estimate(precision, n=len(labels))
            )
    tables = {
        "confusion_matrix": pd.DataFrame(
            confusion_matrix(labels, probs.argmax(1), labels=range(len(classes))),
            index=[f"true {c}" for c in classes],
            columns=[f"predicted {c}" for c in classes],
        )
    }
    return metrics, tables
