"""The calibrate stage's work for each task: fit on calib, measure on calib and test, pick operating points."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from calibration.age import AgeCalibration
from calibration.content import ContentCalibration
from calibration.metrics import binary_scores, multiclass_scores
from calibration.modules import AgeCalibrator, ContentCalibrator
from calibration.operating_points import (
    OperatingPoint,
    at_threshold,
    certify_threshold,
    is_degenerate,
    measure,
    row_units,
    unit_rate,
)
from calibration.plots import reliability_diagram
from core.errors import WorkbenchError
from evaluation.content import protected
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
    calib: Scores,
    test: Scores,
    max_miss_rate: float,
    settings: DictConfig,
    target: str,
    gate: float | None = None,
    base_rate: float | None = None,
) -> OperatingPoint:
    """Certify on calib per unit, measure on test, and mark a point that buys its recall by flagging all."""
    point = replace(
        calib.certify(name, max_miss_rate, settings.confidence), target=target, gate=gate, labels=calib.labels
    )
    return _measured(point, test, settings, base_rate)


def _measured(point: OperatingPoint, test: Scores, settings: DictConfig, base_rate: float | None) -> OperatingPoint:
    point = replace(point, test=measure(point, *test.arrays(), base_rate=base_rate))
    return replace(point, degenerate=is_degenerate(point, settings.max_false_alarm_rate))


@dataclass(frozen=True)
class Scores:
    """One split's scores for one operating point, split into positives and negatives, with their units."""

    positive: np.ndarray
    negative: np.ndarray
    positive_units: np.ndarray
    negative_units: np.ndarray
    unit: str
    labels: str

    @classmethod
    def of(cls, score: np.ndarray, is_positive: np.ndarray, units: np.ndarray, unit: str, labels: str) -> Scores:
        return cls(score[is_positive], score[~is_positive], units[is_positive], units[~is_positive], unit, labels)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.positive, self.negative, self.positive_units, self.negative_units

    def only(self, members: np.ndarray) -> Scores:
        """The positives among `members` (a mask over the positives), against all the negatives."""
        return replace(self, positive=self.positive[members], positive_units=self.positive_units[members])

    def certify(self, name: str, max_miss_rate: float, confidence: float) -> OperatingPoint:
        return certify_threshold(
            name, self.positive, self.negative, max_miss_rate, confidence, self.positive_units, self.unit
        )

    def at(self, name: str, threshold: float, max_miss_rate: float, confidence: float) -> OperatingPoint:
        return at_threshold(
            name, threshold, self.positive, self.negative, max_miss_rate, confidence, self.positive_units, self.unit
        )


def units_of(manifest: pd.DataFrame, outputs: dict[str, torch.Tensor]) -> np.ndarray:
    """The person or scene of each predicted image: the unit every certificate counts."""
    return row_units(manifest.loc[as_numpy(outputs, "position")])


def reference_labels(cfg: DictConfig, manifest: pd.DataFrame) -> str:
    """The manifest column content guarantees refer to: clean labels where the data has them."""
    if cfg.reference_labels == "auto":
        return "true_label" if "true_label" in manifest.columns else "label"
    if cfg.reference_labels not in manifest.columns:
        raise WorkbenchError(
            f"calibration.content.reference_labels={cfg.reference_labels!r} is not a column of this dataset's "
            f"manifest (columns: {sorted(manifest.columns)}). Use auto, label, or a column the manifest has."
        )
    return str(cfg.reference_labels)


def group_labels(manifest: pd.DataFrame, positions: np.ndarray, attributes: list[str]) -> np.ndarray:
    rows = manifest.loc[positions, attributes].astype(str)
    return rows.agg("-".join, axis=1).to_numpy()


def calibrate_content(
    calib: dict[str, torch.Tensor],
    test: dict[str, torch.Tensor],
    manifest: pd.DataFrame,
    classes: list[str],
    settings: DictConfig,
    figures_dir: Path,
) -> CalibrationResult:
    cfg = settings.content
    state = ContentCalibration.fit(
        cfg.method, as_numpy(calib, "logits"), as_numpy(calib, "target"), classes, list(cfg.unsafe_classes)
    )
    calibrator = ContentCalibrator(state)
    uncalibrated = ContentCalibrator(ContentCalibration.identity(state.classes, state.unsafe_classes))
    labels_column = reference_labels(cfg, manifest)
    result = CalibrationResult(content=state)
    scores: dict[str, dict[str, Scores]] = {}
    for split, outputs in (("calib", calib), ("test", test)):
        logits, labels = as_numpy(outputs, "logits"), as_numpy(outputs, "target")
        is_unsafe = np.isin(np.asarray(classes)[labels], state.unsafe_classes)
        before, unsafe_before = uncalibrated.apply(logits)
        after, unsafe_after = calibrator.apply(logits)
        for stage, probs, unsafe in (("before", before, unsafe_before), ("after", after, unsafe_after)):
            for name, value in multiclass_scores(probs, labels).items():
                result.metrics[f"{split}/content/{name}_{stage}"] = value
            for name, value in binary_scores(unsafe, is_unsafe).items():
                result.metrics[f"{split}/content/unsafe_{name}_{stage}"] = value
        # Calibration fits the observed labels; guarantees refer to the reference labels (clean where known).
        reference = manifest.loc[as_numpy(outputs, "position"), labels_column].to_numpy().astype(int)
        units = units_of(manifest, outputs)
        columns = {"unsafe": unsafe_after} | {c: after[:, classes.index(c)] for c in cfg.operating_classes}
        scores[split] = {
            target: Scores.of(
                score, protected(reference, target, classes, state.unsafe_classes), units, "scenes", labels_column
            )
            for target, score in columns.items()
        }
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
        point = _certify(
            f"recall_{name}",
            scores["calib"][name],
            scores["test"][name],
            1 - cfg.min_recall,
            settings,
            target=name,
            base_rate=cfg.base_rate,
        )
        result.operating_points.append(point)
        result.metrics |= point_metrics("content", point)
    return result


def point_metrics(task: str, point: OperatingPoint) -> dict[str, float]:
    """The numbers of one operating point MLflow charts; its full record is the calibration state artefact."""
    test = point.test
    if task == "content":
        values = {
            "calib/recall_lower_bound": 1 - point.miss_rate_upper_bound,
            "test/recall": None if test["miss_rate"] is None else 1 - test["miss_rate"],
            "test/false_alarm_rate": test["false_alarm_rate"],
        }
    else:
        values = {
            "calib/minor_pass_rate_upper_bound": point.miss_rate_upper_bound,
            "test/minor_pass_rate": test["miss_rate"],
            "test/minor_pass_rate_ci_high": test["miss_rate_ci_high"],
            "test/adult_false_rejection": test["false_alarm_rate"],
        }
        for year in test["near_gate"]:
            values[f"test/pass_rate_age{year['age']}"] = year["rate"]
        values |= {f"test/{key}": value for key, value in test.items() if key.startswith("false_rejection_age")}
    values |= {
        "calib/threshold": point.threshold,
        f"calib/certified_{point.unit}": point.positives,
        "test/precision_at_base_rate": test["precision_at_base_rate"],
        "test/degenerate": float(point.degenerate),
    }
    return {
        f"{key.split('/')[0]}/{task}/{point.name}/{key.split('/', 1)[1]}": float(value)
        for key, value in values.items()
        if value is not None
    }


def near_gate_years(gate: float, years: int) -> list[int]:
    """The age years just below a gate, T-years .. T-1, where a gate most often lets a minor through."""
    return [year for year in range(math.ceil(gate) - years, math.ceil(gate)) if year >= 0]


def certify_near_gate(
    point: OperatingPoint, calib: Scores, positive_age: np.ndarray, years: list[int], max_pass_rate: float
) -> OperatingPoint:
    """Lower the gate's threshold until each near-gate year meets its own per-person target too."""
    in_year = {year: calib.only(np.floor(positive_age) == year) for year in years}
    certified = [
        scores.certify(f"{point.name}_age{year}", max_pass_rate, point.confidence) for year, scores in in_year.items()
    ]
    threshold = min([point.threshold, *(certificate.threshold for certificate in certified)])
    shipped = calib.at(point.name, threshold, point.target_max_miss_rate, point.confidence)
    records = []
    for year, scores in in_year.items():
        recounted = scores.at(point.name, threshold, max_pass_rate, point.confidence)
        records.append(
            {
                "age": year,
                "target_max_pass_rate": max_pass_rate,
                "calib_units": recounted.positives,
                "calib_misses": recounted.misses,
                "pass_rate_upper_bound": recounted.miss_rate_upper_bound,
            }
        )
    return replace(shipped, target=point.target, gate=point.gate, labels=point.labels, near_gate=records)


def near_gate_rates(scores: Scores, positive_age: np.ndarray, threshold: float, years: list[int], confidence: float):
    """Per-person pass rate of each year below the gate on a split, with its exact interval."""
    rates = []
    for year in years:
        members = scores.only(np.floor(positive_age) == year)
        rate = unit_rate(members.positive < threshold, members.positive_units, confidence)
        rates.append({"age": year} | rate | ({"reason": f"no {scores.unit} aged {year}"} if not rate["units"] else {}))
    return rates


def calibrate_age(
    model,
    calib: dict[str, torch.Tensor],
    test: dict[str, torch.Tensor],
    manifest: pd.DataFrame,
    settings: DictConfig,
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
    calibrator = AgeCalibrator(state, None)
    uncalibrated = AgeCalibrator(AgeCalibration.identity(gates, state.max_age), None)
    calibrated = {}
    for split, outputs in (("calib", calib), ("test", test)):
        age = as_numpy(outputs, "target")
        before = uncalibrated.apply(head, outputs["raw"])["prob_below"]
        after = calibrated[split] = calibrator.apply(head, outputs["raw"])["prob_below"]
        curves = {}
        for i, gate in enumerate(gates):
            minor = age < gate
            prefix = f"{split}/age/gate{gate:g}"
            for stage, probs in (("before", before[:, i]), ("after", after[:, i])):
                result.metrics |= {f"{prefix}/{k}_{stage}": v for k, v in binary_scores(probs, minor).items()}
            curves |= {f"P(age<{gate:g}) before": (before[:, i], minor), f"P(age<{gate:g}) after": (after[:, i], minor)}
        result.figures.append(
            reliability_diagram(
                curves, f"age gates reliability ({split})", figures_dir / f"reliability_age_{split}.png"
            )
        )

    age_test = as_numpy(test, "target")
    for coverage in state.intervals:
        quantile = coverage.row_quantiles(groups["test"]) if group_by else None
        interval = AgeCalibrator(state, coverage.coverage).apply(head, test["raw"], quantile)
        low, high = interval["interval_low"], interval["interval_high"]
        inside = (age_test >= low) & (age_test <= high)
        prefix = f"test/age/interval{round(coverage.coverage * 100)}"
        result.metrics |= {f"{prefix}/coverage": float(inside.mean()), f"{prefix}/width": float((high - low).mean())}
        for group in np.unique(groups["test"]) if group_by else []:
            members = groups["test"] == group
            result.metrics[f"{prefix}/{group}/coverage"] = float(inside[members].mean())
            result.metrics[f"{prefix}/{group}/count"] = float(members.sum())

    age_calib, expected_calib = as_numpy(calib, "target"), as_numpy(calib, "expected_age")
    units = {"calib": units_of(manifest, calib), "test": units_of(manifest, test)}
    for i, gate in enumerate(gates):
        c_minor, t_minor = age_calib < gate, age_test < gate
        calib_scores = Scores.of(calibrated["calib"][:, i], c_minor, units["calib"], "subjects", "age")
        test_scores = Scores.of(calibrated["test"][:, i], t_minor, units["test"], "subjects", "age")
        years = near_gate_years(gate, cfg.near_gate_years)
        point = _certify(
            f"gate{gate:g}", calib_scores, test_scores, cfg.max_minor_pass_rate, settings, "minor", gate, cfg.base_rate
        )
        if cfg.near_gate_max_pass_rate is not None:
            point = certify_near_gate(point, calib_scores, age_calib[c_minor], years, cfg.near_gate_max_pass_rate)
            point = _measured(point, test_scores, settings, cfg.base_rate)
        point.test["near_gate"] = near_gate_rates(
            test_scores, age_test[t_minor], point.threshold, years, settings.confidence
        )
        # The same guarantee on the predicted age alone, NIST's "challenge age": pass when predicted age > c.
        challenge = certify_threshold(
            f"gate{gate:g}_challenge",
            -expected_calib[c_minor],
            -expected_calib[~c_minor],
            cfg.max_minor_pass_rate,
            settings.confidence,
            units["calib"][c_minor],
            "subjects",
        )
        result.metrics[f"calib/age/gate{gate:g}/challenge_age"] = -challenge.threshold
        t_score = calibrated["test"][:, i]
        for year in range(int(gate), int(gate) + cfg.cost_years):
            in_year = (age_test >= year) & (age_test < year + 1)
            rate = float((t_score[in_year] >= point.threshold).mean()) if in_year.any() else None
            point.test[f"false_rejection_age{year}"] = rate
        result.metrics |= point_metrics("age", point)
        result.operating_points.append(point)
    return result
