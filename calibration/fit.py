"""The calibrate stage's work for each task: fit on calib, measure on calib and test, pick operating points."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from scipy.special import softmax

from calibration.age import AgeCalibration
from calibration.content import ContentCalibration
from calibration.metrics import binary_scores, multiclass_scores
from calibration.operating_points import OperatingPoint, certify_threshold, measure
from calibration.plots import reliability_diagram
from models.predict import as_numpy


@dataclass
class CalibrationResult:
    content: ContentCalibration | None = None
    age: AgeCalibration | None = None
    operating_points: list[OperatingPoint] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)


def _certify(
    name: str,
    calib: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    max_miss_rate: float,
    confidence: float,
    target: str,
    gate: float | None = None,
) -> OperatingPoint:
    point = certify_threshold(name, calib[0], calib[1], max_miss_rate, confidence)
    return replace(point, test=measure(point, *test), target=target, gate=gate)


def group_labels(manifest: pd.DataFrame, positions: np.ndarray, attributes: list[str]) -> np.ndarray:
    rows = manifest.loc[positions, attributes].astype(str)
    return rows.agg("-".join, axis=1).to_numpy()


def calibrate_content(
    calib: dict[str, torch.Tensor],
    test: dict[str, torch.Tensor],
    classes: list[str],
    settings: DictConfig,
    confidence: float,
    figures_dir: Path,
) -> CalibrationResult:
    cfg = settings.content
    state = ContentCalibration.fit(
        cfg.method, as_numpy(calib, "logits"), as_numpy(calib, "target"), classes, list(cfg.unsafe_classes)
    )
    result = CalibrationResult(content=state)
    scores: dict[str, dict[str, np.ndarray]] = {}
    for split, outputs in (("calib", calib), ("test", test)):
        logits, labels = as_numpy(outputs, "logits"), as_numpy(outputs, "target")
        is_unsafe = np.isin(np.asarray(classes)[labels], state.unsafe_classes)
        before, after = softmax(logits, axis=1), state.probabilities(logits)
        for stage, probs, unsafe in (
            ("before", before, before[:, state.unsafe_mask].sum(1)),
            ("after", after, state.unsafe_score(logits)),
        ):
            for name, value in multiclass_scores(probs, labels).items():
                result.metrics[f"{split}/content/{name}_{stage}"] = value
            for name, value in binary_scores(unsafe, is_unsafe).items():
                result.metrics[f"{split}/content/unsafe_{name}_{stage}"] = value
        result.metrics[f"{split}/content/ece"] = result.metrics[f"{split}/content/ece_after"]
        scores[split] = {"unsafe": (state.unsafe_score(logits), is_unsafe)}
        for target in cfg.operating_classes:
            column = classes.index(target)
            scores[split][target] = (after[:, column], labels == column)
        result.figures.append(
            reliability_diagram(
                {
                    "before": (before.max(1), before.argmax(1) == labels),
                    "after": (after.max(1), after.argmax(1) == labels),
                },
                f"content top-label reliability ({split})",
                figures_dir / f"reliability_content_{split}.png",
            )
        )

    for name in [*cfg.operating_classes, "unsafe"]:
        (c_score, c_pos), (t_score, t_pos) = scores["calib"][name], scores["test"][name]
        point = _certify(
            f"recall_{name}",
            (c_score[c_pos], c_score[~c_pos]),
            (t_score[t_pos], t_score[~t_pos]),
            1 - cfg.min_recall,
            confidence,
            target=name,
        )
        result.operating_points.append(point)
        result.metrics |= {
            f"calib/content/{point.name}/threshold": point.threshold,
            f"calib/content/{point.name}/recall_lower_bound": 1 - point.miss_rate_upper_bound,
            f"test/content/{point.name}/recall": 1 - point.test["miss_rate"],
            f"test/content/{point.name}/fpr": point.test["false_alarm_rate"],
        }
    return result


def calibrate_age(
    model,
    calib: dict[str, torch.Tensor],
    test: dict[str, torch.Tensor],
    manifest: pd.DataFrame,
    settings: DictConfig,
    confidence: float,
    figures_dir: Path,
) -> CalibrationResult:
    cfg, head = settings.age, model.head
    gates = sorted(float(g) for g in cfg.gates)
    group_by = list(cfg.mondrian_attributes) if cfg.mondrian else []
    groups = {
        s: group_labels(manifest, as_numpy(o, "position"), group_by) if group_by else None
        for s, o in (("calib", calib), ("test", test))
    }
    state = AgeCalibration.fit(
        head,
        calib["raw"],
        as_numpy(calib, "expected_age"),
        as_numpy(calib, "target"),
        gates,
        [float(c) for c in cfg.coverages],
        groups["calib"],
        group_by,
        float(model.hparams.max_age),
    )
    result = CalibrationResult(age=state, metrics={"calib/age/temperature": state.temperature})
    calibrated = {}
    for split, outputs in (("calib", calib), ("test", test)):
        age = as_numpy(outputs, "target")
        with torch.no_grad():
            before = head.prob_below(outputs["raw"], torch.tensor(gates)).numpy().astype(np.float64)
        after = calibrated[split] = state.prob_below(head, outputs["raw"])
        curves = {}
        for i, gate in enumerate(gates):
            minor = age < gate
            prefix = f"{split}/age/gate{gate:g}"
            for stage, probs in (("before", before[:, i]), ("after", after[:, i])):
                result.metrics |= {f"{prefix}/{k}_{stage}": v for k, v in binary_scores(probs, minor).items()}
            result.metrics |= {
                f"{prefix}/ece": result.metrics[f"{prefix}/ece_after"],
                f"{prefix}/brier": result.metrics[f"{prefix}/brier_after"],
            }
            curves |= {f"P(age<{gate:g}) before": (before[:, i], minor), f"P(age<{gate:g}) after": (after[:, i], minor)}
        result.figures.append(
            reliability_diagram(
                curves, f"age gates reliability ({split})", figures_dir / f"reliability_age_{split}.png"
            )
        )

    age_test, expected_test = as_numpy(test, "target"), as_numpy(test, "expected_age")
    spread_test = state.spread(head, test["raw"])
    for coverage in state.intervals:
        low, high = state.interval(coverage.coverage, expected_test, spread_test, groups["test"])
        inside = (age_test >= low) & (age_test <= high)
        prefix = f"test/age/interval{round(coverage.coverage * 100)}"
        result.metrics |= {f"{prefix}/coverage": float(inside.mean()), f"{prefix}/width": float((high - low).mean())}
        for group in np.unique(groups["test"]) if group_by else []:
            members = groups["test"] == group
            result.metrics[f"{prefix}/{group}/coverage"] = float(inside[members].mean())
            result.metrics[f"{prefix}/{group}/count"] = float(members.sum())

    age_calib, expected_calib = as_numpy(calib, "target"), as_numpy(calib, "expected_age")
    for i, gate in enumerate(gates):
        c_minor, t_minor = age_calib < gate, age_test < gate
        c_score, t_score = calibrated["calib"][:, i], calibrated["test"][:, i]
        point = _certify(
            f"gate{gate:g}",
            (c_score[c_minor], c_score[~c_minor]),
            (t_score[t_minor], t_score[~t_minor]),
            cfg.max_minor_pass_rate,
            confidence,
            target="minor",
            gate=gate,
        )
        # The same guarantee on the predicted age alone, NIST's "challenge age": pass when predicted age > c.
        challenge = certify_threshold(
            f"gate{gate:g}_challenge",
            -expected_calib[c_minor],
            -expected_calib[~c_minor],
            cfg.max_minor_pass_rate,
            confidence,
        )
        prefix = f"gate{gate:g}"
        result.metrics |= {
            f"calib/age/{prefix}/threshold": point.threshold,
            f"calib/age/{prefix}/minor_pass_rate_upper_bound": point.miss_rate_upper_bound,
            f"calib/age/{prefix}/challenge_age": -challenge.threshold,
            f"test/age/{prefix}/minor_pass_rate": point.test["miss_rate"],
            f"test/age/{prefix}/minor_pass_rate_ci_high": point.test["miss_rate_ci_high"],
            f"test/age/{prefix}/adult_false_rejection": point.test["false_alarm_rate"],
        }
        for year in range(int(gate), int(gate) + cfg.cost_years):
            in_year = (age_test >= year) & (age_test < year + 1)
            rate = float((t_score[in_year] >= point.threshold).mean()) if in_year.any() else math.nan
            point.test[f"false_rejection_age{year}"] = rate
            if in_year.any():
                result.metrics[f"test/age/{prefix}/false_rejection_age{year}"] = rate
        result.operating_points.append(point)
    return result
