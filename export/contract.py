"""The export contract: everything a runtime filter needs to preprocess, run and decide, and nothing to guess.

Its JSON Schema (`contract.schema.json`) is versioned with it; see docs/export-contract.md.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from calibration.operating_points import COMPARISON
from calibration.state import CalibrationState
from models.base import IMAGENET_MEAN, IMAGENET_STD
from tracking.errors import WorkbenchError
from tracking.mlflow_run import git_state

SCHEMA_PATH = Path(__file__).with_name("contract.schema.json")
METADATA_KEY = "childsafe_contract"


def non_finite_fields(value: Any, path: str = "") -> list[str]:
    """Dotted paths of NaN or infinite numbers, which strict JSON parsers (JSON.parse) reject."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [path or "<root>"]
    if isinstance(value, dict):
        return [f for key, item in value.items() for f in non_finite_fields(item, f"{path}.{key}".lstrip("."))]
    if isinstance(value, list | tuple):
        return [f for index, item in enumerate(value) for f in non_finite_fields(item, f"{path}.{index}")]
    return []


def contract_text(contract: dict[str, Any]) -> str:
    """The contract as strict JSON: a figure the data cannot support is null with a reason, never NaN."""
    return json.dumps(contract, indent=2, sort_keys=True, allow_nan=False)


def validate_contract(contract: dict[str, Any]) -> None:
    """Raise a WorkbenchError naming the first field that breaks the schema or is not a finite number."""
    non_finite = non_finite_fields(contract)
    if non_finite:
        raise WorkbenchError(
            f"Export contract field '{non_finite[0]}' is NaN or infinite ({len(non_finite)} such fields). "
            "Strict JSON parsers reject it: write null with a reason beside it instead."
        )
    validator = Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    errors = sorted(validator.iter_errors(contract), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        field = ".".join(str(p) for p in error.absolute_path) or "<root>"
        raise WorkbenchError(f"Export contract field '{field}' is invalid: {error.message}")


def _outputs(state: CalibrationState, coverage: float) -> list[dict[str, Any]]:
    decisions = [p.name for p in state.operating_points]
    if state.task == "content":
        classes = state.content.classes
        return [
            {
                "name": "probabilities",
                "dtype": "float32",
                "shape": ["batch", len(classes)],
                "columns": classes,
                "meaning": "calibrated class probabilities (softmax after the fitted calibrator)",
            },
            {
                "name": "unsafe_score",
                "dtype": "float32",
                "shape": ["batch"],
                "meaning": f"calibrated probability that the frame is unsafe: any of {state.content.unsafe_classes}",
            },
            {
                "name": "decisions",
                "dtype": "bool",
                "shape": ["batch", len(decisions)],
                "columns": decisions,
                "meaning": "True = filter this frame, one column per operating point",
            },
        ]
    gates = [f"{g.gate:g}" for g in state.age.gates]
    return [
        {"name": "expected_age", "dtype": "float32", "shape": ["batch"], "meaning": "point estimate of age in years"},
        {
            "name": "prob_below",
            "dtype": "float32",
            "shape": ["batch", len(gates)],
            "columns": [f"P(age < {g})" for g in gates],
            "meaning": "calibrated probability of being younger than each gate",
        },
        {
            "name": "interval_low",
            "dtype": "float32",
            "shape": ["batch"],
            "meaning": f"lower end of the split-conformal age interval at coverage {coverage:g}",
        },
        {
            "name": "interval_high",
            "dtype": "float32",
            "shape": ["batch"],
            "meaning": f"upper end of the split-conformal age interval at coverage {coverage:g}",
        },
        {
            "name": "decisions",
            "dtype": "bool",
            "shape": ["batch", len(decisions)],
            "columns": decisions,
            "meaning": "True = treat as under the gate's age (block), one column per gate",
        },
    ]


def _operating_points(state: CalibrationState) -> list[dict[str, Any]]:
    points = []
    for column, point in enumerate(state.operating_points):
        if state.task == "age":
            score = {"output": "prob_below", "column": column}
            meaning = f"at most {point.target_max_miss_rate:g} of people under {point.gate:g} pass the gate"
        else:
            score = (
                {"output": "unsafe_score"}
                if point.target == "unsafe"
                else {"output": "probabilities", "column": state.content.classes.index(point.target)}
            )
            meaning = f"at least {1 - point.target_max_miss_rate:g} of '{point.target}' scenes are flagged"
        points.append(
            {
                "name": point.name,
                "target": point.target,
                "gate": point.gate,
                "decision_column": column,
                "score": score,
                "threshold": point.threshold,
                "comparison": COMPARISON,
                "rule": "decision = score >= threshold",
                "degenerate": point.degenerate,
                "guarantee": {
                    "meaning": meaning,
                    "unit": point.unit,
                    "unit_rule": f"one of the {point.unit} counts as missed when any of its positive images is missed",
                    "labels": point.labels,
                    "target_max_miss_rate": point.target_max_miss_rate,
                    "confidence": point.confidence,
                    "bound": f"one-sided Clopper-Pearson upper bound on the miss rate over {point.unit}, calib split",
                    "calib_units": point.positives,
                    "calib_images": point.positive_images,
                    "calib_misses": point.misses,
                    "miss_rate_upper_bound": point.miss_rate_upper_bound,
                    "calib_false_alarm_rate": point.false_alarm_rate,
                    "near_gate": point.near_gate,
                },
                "test": point.test,
            }
        )
    return points


def _calibration(state: CalibrationState) -> dict[str, Any]:
    if state.task == "content":
        c = state.content
        return {
            "method": c.method,
            "temperature": c.temperature,
            "vector_weight": c.vector_weight,
            "vector_bias": c.vector_bias,
            "isotonic_knots": len(c.isotonic_x),
            "calib_size": next((p.positives + p.negatives for p in state.operating_points), 0),
        }
    a = state.age
    return {
        "method": "temperature + per-gate choice of temperature or isotonic (5-fold CV Brier)",
        "temperature": a.temperature,
        "gates": {f"{g.gate:g}": g.method for g in a.gates},
        "intervals": [
            {"coverage": i.coverage, "quantile": i.quantile, "method": "normalised split conformal"}
            for i in a.intervals
        ],
        "calib_size": a.calib_size,
        "max_age": a.max_age,
        "clipping": f"expected age and interval ends are clipped to [0, {a.max_age:g}] years",
    }


def build_contract(
    state: CalibrationState,
    model_name: str,
    image_size: int,
    coverage: float,
    data: dict[str, Any],
    metrics: dict[str, Any],
    opset: int,
    exporter: str,
    smoothing: dict[str, Any],
    face_crop: dict[str, Any] | None,
    release: dict[str, Any],
    quantization: dict[str, Any] | None = None,
) -> dict[str, Any]:
    contract = {
        "schema_version": 1,
        "task": state.task,
        "model_name": model_name,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mlflow_run_id": state.train_run_id,
        "git_commit": git_state()["git.commit"],
        "input": {
            "name": "images",
            "dtype": "uint8",
            "layout": "NHWC",
            "height": image_size,
            "width": image_size,
            "channels": 3,
            "colour_order": "RGB",
            "resize": {
                "in_graph": False,
                "method": "bilinear",
                "note": f"resize the (cropped) image to exactly {image_size}x{image_size} before the call",
            },
            "normalise": {
                "in_graph": True,
                "mean": [m * 255 for m in IMAGENET_MEAN],
                "std": [s * 255 for s in IMAGENET_STD],
            },
            "in_graph": ["uint8 to float", "per-channel normalisation", "network", "calibration", "decisions"],
        },
        "outputs": _outputs(state, coverage),
        "labels": (
            {"classes": state.content.classes, "unsafe_classes": state.content.unsafe_classes}
            if state.task == "content"
            else {"classes": ["age in years"], "gates": [g.gate for g in state.age.gates]}
        ),
        "operating_points": _operating_points(state),
        "calibration": _calibration(state),
        "data": data,
        "metrics": metrics,
        "versions": {
            "torch": metadata.version("torch"),
            "onnx": metadata.version("onnx"),
            "opset": opset,
            "onnxruntime": metadata.version("onnxruntime"),
            "exporter": exporter,
        },
        "runtime": {"smoothing": smoothing},
        "release": release,
    }
    if face_crop is not None:
        contract["input"]["face_crop"] = face_crop
    contract["precision"] = "int8" if quantization and quantization["kept"] else "fp32"
    if quantization is not None:
        contract["quantization"] = quantization
    validate_contract(contract)
    return contract
