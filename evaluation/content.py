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

from calibration.metrics import multiclass_scores
from evaluation.stats import Estimate, not_measurable, proportion, subject_bootstrap


def _recall_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    allowed = fpr <= target
    return float(tpr[allowed].max()) if allowed.any() else 0.0


def _fpr_at_recall(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    return float(fpr[tpr >= target].min())


def protected(labels: np.ndarray, target: str, classes: list[str], unsafe_classes: list[str]) -> np.ndarray:
    """Which samples an operating point must flag: its class, or any unsafe class for target "unsafe"."""
    names = np.asarray(classes)[labels]
    return np.isin(names, unsafe_classes) if target == "unsafe" else names == target


def content_metrics(
    frame: pd.DataFrame, classes: list[str], unsafe_classes: list[str], base_rate: float, targets: dict[str, str]
) -> tuple[dict[str, Estimate], dict]:
    """`targets` maps each operating point's name to what it protects (its `block_<name>` column flags)."""
    labels = frame["label"].to_numpy()
    probs = frame[[f"p_{c}" for c in classes]].to_numpy(np.float64)
    subjects = frame["subject_id"].to_numpy()
    metrics: dict[str, Estimate] = {
        "accuracy": proportion(probs.argmax(1) == labels, "samples"),
        "ece": Estimate(multiclass_scores(probs, labels)["ece"], n=len(labels)),
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
    precision, recall, _, support = precision_recall_fscore_support(
        labels, probs.argmax(1), labels=range(len(classes)), zero_division=np.nan
    )
    for index, name in enumerate(classes):
        positive = labels == index
        if support[index] == 0 or positive.all():
            metrics[f"{name}/auroc"] = not_measurable(f"'{name}' is absent or alone in this data")
            continue
        metrics[f"{name}/precision"] = Estimate(float(precision[index]), n=int(support[index]))
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
            metrics[f"unsafe/recall_at_fpr{target:g}"] = Estimate(_recall_at_fpr(fpr, tpr, target), n=len(score))
        for target in (0.95, 0.99):
            metrics[f"unsafe/fpr_at_recall{target:g}"] = Estimate(_fpr_at_recall(fpr, tpr, target), n=len(score))
    else:
        metrics["unsafe/recall_at_fpr0.01"] = not_measurable("needs both safe and unsafe samples")
    for point, target in targets.items():
        flagged = frame[f"block_{point}"].to_numpy(bool)
        positives = protected(labels, target, classes, unsafe_classes)
        recall, fpr = proportion(flagged[positives], "positives"), proportion(flagged[~positives], "negatives")
        metrics[f"{point}/recall"], metrics[f"{point}/fpr"] = recall, fpr
        if recall.measurable and fpr.measurable and recall.value * base_rate + fpr.value * (1 - base_rate) > 0:
            # What a reviewer sees in live traffic, where unsafe frames are rare.
            precision_live = recall.value * base_rate / (recall.value * base_rate + fpr.value * (1 - base_rate))
            metrics[f"{point}/precision_at_base_rate"] = Estimate(precision_live, n=len(labels))
    tables = {
        "confusion_matrix": pd.DataFrame(
            confusion_matrix(labels, probs.argmax(1), labels=range(len(classes))),
            index=[f"true {c}" for c in classes],
            columns=[f"predicted {c}" for c in classes],
        )
    }
    return metrics, tables
