"""The export contract: everything a runtime filter needs to preprocess, run and decide, and nothing to guess.

Its JSON Schema (`contract.schema.json`) is versioned with it; see docs/export-contract.md (schema 2).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from childsafe_runtime.consumer import ABSTAIN_RULE, DECISION_RULE
from childsafe_runtime.crop import CropConvention
from childsafe_runtime.frames import IMAGE_SUFFIXES, SizeLimits
from childsafe_runtime.signing import signing_record
from jsonschema import Draft202012Validator

from calibration.age_streams import AgeStreamPolicy
from calibration.operating_points import COMPARISON
from calibration.state import CalibrationState
from core.errors import WorkbenchError
from models.base import IMAGENET_MEAN, IMAGENET_STD
from models.resize import Framing
from tracking.mlflow_run import git_state

SCHEMA_PATH = Path(__file__).with_name("contract.schema.json")
SCHEMA_VERSION = 2
# Input height and width the graph accepts, in pixels: the reference consumer's defaults, stated in the contract.
MIN_SIDE, MAX_SIDE = SizeLimits.min_side, SizeLimits.max_side
# Every `rule` a schema-2 contract may state, taken from the reference consumer so the two cannot disagree;
# a consumer refuses any other, as it cannot know its meaning.
KNOWN_RULES = (DECISION_RULE, ABSTAIN_RULE)


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


def float32_exact(value: float) -> float:
    """The float32 nearest `value`, as a double: its JSON repr parses back to exactly that float32 in any language."""
    return float(np.float32(value))


def gate_number(gate: float) -> int | float:
    """A gate as one JSON number type everywhere (13, not 13.0 in one place and "13" in another)."""
    return int(gate) if float(gate).is_integer() else float(gate)


OOD_OUTPUT = {
    "name": "ood_score",
    "dtype": "float32",
    "shape": ["batch"],
    "meaning": "out-of-distribution score of the input after the in-graph resize; abstain when above "
    "abstention.ood.threshold",
}


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
            OOD_OUTPUT,
            {
                "name": "decisions",
                "dtype": "bool",
                "shape": ["batch", len(decisions)],
                "columns": decisions,
                "meaning": "True = filter this frame, one column per operating point",
            },
        ]
    gates = [f"{g.gate:g}" for g in state.age.gates]  # column names: "P(age < 13)"
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
        OOD_OUTPUT,
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
                "gate": None if point.gate is None else gate_number(point.gate),
                "decision_column": column,
                "score": score,
                "threshold": float32_exact(point.threshold),
                "threshold_precision": "float32",
                "comparison": COMPARISON,
                "rule": DECISION_RULE,
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
        "gates": [{"gate": gate_number(g.gate), "method": g.method} for g in a.gates],
        "intervals": [
            {"coverage": i.coverage, "quantile": i.quantile, "method": "normalised split conformal"}
            for i in a.intervals
        ],
        "calib_size": a.calib_size,
        "max_age": a.max_age,
        "clipping": f"expected age and interval ends are clipped to [0, {a.max_age:g}] years",
    }


def _input(state: CalibrationState, framing: Framing, face_crop: CropConvention | None) -> dict[str, Any]:
    cache, size, offset = framing.cache_size, framing.input_size, framing.offset
    what = "the face crop (age)" if face_crop is not None else "the frame (content)"
    spec = {
        "name": "images",
        "dtype": "uint8",
        "layout": "NHWC",
        "channels": 3,
        "colour_order": "RGB",
        "height": None,
        "width": None,
        "shape": ["batch", "height", "width", 3],
        "min_side": MIN_SIDE,
        "max_side": MAX_SIDE,
        "network_size": size,
        "resize": {
            "in_graph": True,
            "method": "bilinear",
            "antialias": True,
            "coordinate_transformation": "half_pixel",
            "onnx_op": "Resize(mode=linear, antialias=1)",
            "rounding": "round half to even, clamp to [0, 255]",
            "output_size": [cache, cache],
            "note": f"feed {what} at its own size; the graph resizes it to {cache}x{cache} as training data was "
            "cached. Do not resize before the call.",
        },
        "centre_crop": {
            "in_graph": True,
            "size": [size, size],
            "offset": offset,
            "rule": f"rows and columns [{offset}, {offset + size}) of the {cache}x{cache} resized image, as "
            "evaluation and calibration took them from the cache; training cropped at random inside it"
            + ("" if offset else " (here the whole image: the cache has no border)"),
        },
        "normalise": {
            "in_graph": True,
            "mean": [m * 255 for m in IMAGENET_MEAN],
            "std": [s * 255 for s in IMAGENET_STD],
        },
        "decoding": {
            "exif_orientation": "applied before anything else (the box coordinates refer to the oriented frame)",
            "alpha": "composited on black",
            "modes": "greyscale, palette, CMYK and 16-bit are converted to 8-bit RGB",
            "formats": list(IMAGE_SUFFIXES),
            "animated": "a .gif is read as its first frame",
        },
        "in_graph": [
            "uint8 NHWC to float NCHW",
            f"antialiased bilinear resize to {cache}x{cache}, rounded and clamped to [0, 255]",
            f"centre {size}x{size} crop at offset {offset}",
            "out-of-distribution score",
            "per-channel normalisation",
            "network",
            "calibration",
            "decisions",
        ],
    }
    if face_crop is not None:
        spec["face_crop"] = face_crop.describe()
    return spec


def _abstention(state: CalibrationState, face_crop: CropConvention | None) -> dict[str, Any]:
    ood = state.ood
    section: dict[str, Any] = {
        "ood": {
            "output": "ood_score",
            "threshold": float32_exact(ood.threshold),
            "threshold_precision": "float32",
            "rule": ABSTAIN_RULE,
            "fitted_on": "calib split",
            "quantile": ood.quantile,
            "calib_size": ood.calib_size,
            "calib_abstention_rate": ood.calib_abstention_rate,
            "test_abstention_rate": ood.test_abstention_rate,
            "definition": "mean over 15 statistics of the resized input of ((statistic - calib mean)^2 / calib "
            "variance); per channel: mean / 255, log(1 + std), log(1 + mean |vertical difference| + mean "
            "|horizontal difference|), that log minus log(1 + std), and the three inter-channel correlations "
            "cov / (std_a * std_b + 1). Blank frames (no spread) and noise (rough, colour-uncorrelated) score far "
            "above the threshold; the score judges the input, not the model's confidence.",
        },
        "policy": "an abstained face or frame has no decision: it does not pass a gate and it casts no vote in "
        "smoothing; see runtime.no_decision",
    }
    if face_crop is not None:
        section["face_too_small"] = {
            "min_face_side": face_crop.min_face_side,
            "rule": "abstain when min(x1 - x0, y1 - y0) of the detector's box < min_face_side",
        }
    return section


def shipped_smoothing(state: CalibrationState, configured: dict[str, Any]) -> dict[str, Any]:
    """What the runtime applies per stream: the certified stream policy where calibrate chose one, else the config's
    k-of-n. A certified age policy is the mean-logit window (`MeanLogitWindow`), not a k-of-n."""
    if state.age_policy is not None:
        policy = state.age_policy
        return {
            "method": "mean_logit",
            "n": policy.n,
            "thresholds_logit": policy.thresholds,
            "inputs": {gate["column"]: f"P(age < {gate['gate']:g})" for gate in policy.gates},
            "frame_rate_hz": policy.frame_rate_hz,
            "no_face_seconds": configured["no_face_seconds"],
            "source": "the certified age stream policy (see stream)",
        }
    if state.stream is None:
        return configured | {"source": "export.smoothing: a fixed setting, not chosen by a measurement"}
    policy = state.stream
    return configured | {
        "k": policy.k,
        "n": policy.n,
        "frame_rate_hz": policy.frame_rate_hz,
        "source": "the certified stream policy (see stream)",
    }


def _stream(state: CalibrationState, smoothing: dict[str, Any]) -> dict[str, Any]:
    """The stream section: the policy, what it certifies and its measured figures, or why there are none."""
    policy = state.stream
    section: dict[str, Any] = {
        "frame_rate_hz": smoothing["frame_rate_hz"],
        "frame_rate_rule": "the policy counts frames: it assumes frames sampled at frame_rate_hz; a consumer reading "
        "a video at another rate samples it down to this rate (or warns that it cannot)",
        "policy": {"method": "k_of_n", "k": smoothing["k"], "n": smoothing["n"], "applied_as": "runtime.smoothing"}
        if smoothing["method"] == "k_of_n"
        else {"method": smoothing["method"], "n": smoothing["n"], "applied_as": "runtime.smoothing"},
    }
    if state.age_stream is not None:
        section["age"] = state.age_stream.to_dict() | {
            "applied_by_runtime": False,
            "meaning": "a measurement of what judging a person over a stream buys: per gate, test minor pass rate "
            "and adult false rejection after m frames, at the threshold matching the per-frame operating point's "
            "calib adult false rejection; the runtime applies runtime.smoothing (see policy), not this measurement",
        }
    if state.age_policy is not None:
        return section | _age_policy(state.age_policy)
    if policy is None:
        return section | {"certified": False, "reason": state.stream_reason or "no stream policy was fitted"}
    return section | {
        "certified": True,
        "policy": section["policy"]
        | {
            "decision": policy.decision,
            "chosen_by": f"fewest false interruptions per hour of benign calib stream among the {policy.candidates} "
            f"k-of-n rules with 1 <= k <= n whose recall within {policy.deadline_s:g} s is certified",
            "start": "fails closed: until n frames have voted, max(1, k - (n - seen)) blocking votes block",
            "other_decisions": "every decision column is smoothed with the same k-of-n; the certificate covers "
            f"'{policy.decision}'",
        },
        "certificate": {
            "deadline_s": policy.deadline_s,
            "min_recall": policy.min_deadline_recall,
            "recall_lower_bound": policy.recall_lower_bound,
            "confidence": policy.confidence,
            "method": "one-sided Clopper-Pearson over calib event streams: a stream is recalled when it is blocked "
            "within deadline_s of the event's onset",
            "unit": "streams",
            "event_streams": policy.calib_event_streams,
            "streams": policy.calib_streams,
        },
        "calib": policy.calib,
        "test": policy.test,
        "compared": policy.compared,
    }


def _age_policy(policy: AgeStreamPolicy) -> dict[str, Any]:
    """The certified age stream policy's part of the stream section: the rule, each gate's certificate, figures."""
    return {
        "certified": True,
        "policy": {
            "method": "mean_logit",
            "n": policy.n,
            "applied_as": "runtime.smoothing",
            "chosen_by": f"fewest calib adults still held under a gate on their last frame, averaged over the gates, "
            f"among the {policy.candidates} windows 1 <= n <= {policy.candidates} whose thresholds certify every gate",
            "start": "fails closed: every gate blocks until n frames of the stream have been decided",
        },
        "certificate": {
            "max_minor_pass_rate": policy.max_minor_pass_rate,
            "confidence": policy.confidence,
            "method": "one-sided Clopper-Pearson over calib people (one stream each): a person under the gate counts "
            "as passed when any window of their stream passed",
            "unit": "people",
            "streams": policy.calib_streams,
            "frames_per_stream": policy.frames_per_stream,
            "covers": f"the first {policy.frames_per_stream} decided frames of a stream; later windows are the same "
            "rule on a stationary stream, but each is one more chance to pass",
        },
        "gates": policy.gates,
        "test_streams": policy.test_streams,
    }


def _smoothing_rule(smoothing: dict[str, Any]) -> dict[str, Any]:
    """The runtime.smoothing fields that say, in words, how the shipped policy decides and starts."""
    n = smoothing["n"]
    if smoothing["method"] == "mean_logit":
        return {
            "n": n,
            "thresholds_logit": smoothing["thresholds_logit"],
            "inputs": smoothing["inputs"],
            "rule": f"a stream blocks on a gate column while the mean of logit(clip(p, 1e-6, 1 - 1e-6)) over its last "
            f"n={n} decided frames is >= that column's thresholds_logit, p being the frame's inputs[column] output "
            "(the youngest decided face's: the largest)",
            "warm_up": f"until n={n} frames have been decided, the stream blocks on every column (fails closed)",
        }
    k = smoothing["k"]
    return {
        "k": k,
        "n": n,
        "rule": f"a stream blocks on a decision column when at least k={k} of its last n={n} decided frames "
        "blocked on it",
        "warm_up": "until n frames have been seen, a stream blocks when at least max(1, k - (n - seen)) of the "
        "seen frames blocked: its first frame decides alone",
    }


def _runtime(state: CalibrationState, smoothing: dict[str, Any]) -> dict[str, Any]:
    n = smoothing["n"]
    section: dict[str, Any] = {
        "smoothing": {
            "method": smoothing["method"],
            **_smoothing_rule(smoothing),
            "source": smoothing["source"],
            "authoritative": "smoothed",
            "frame_rate_hz": smoothing["frame_rate_hz"],
            "frame_rate_note": f"chosen for frames sampled at {smoothing['frame_rate_hz']:g} per second "
            f"(a {n / smoothing['frame_rate_hz']:g} s window)",
            "stream": "frames sharing a stream_id, in order; a single image is a stream of one frame",
        },
        "no_decision": (
            {
                "no_face_seconds": smoothing["no_face_seconds"],
                "rule": "a frame with no face, or where every face abstained, has no decision; a stream with no "
                "decided face for no_face_seconds is flagged `no_face` (the runtime should then treat the user as "
                "unverified)",
            }
            if state.task == "age"
            else {"rule": "an abstained frame has no decision: it casts no vote in smoothing"}
        ),
    }
    if state.task == "age":
        section["faces"] = {
            "frame_decision": "most restrictive over the frame's faces: a decision column is true when any decided "
            "face's is true (the youngest face decides)"
        }
    return section


def build_contract(
    state: CalibrationState,
    model_name: str,
    framing: Framing,
    coverage: float,
    data: dict[str, Any],
    metrics: dict[str, Any],
    opset: int,
    exporter: str,
    smoothing: dict[str, Any],
    face_crop: CropConvention | None,
    release: dict[str, Any],
    quantization: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The schema-2 contract; `release["signing"]` is `childsafe_runtime.signing.signing_record(key)`.

    A release without it is recorded as unsigned, so every contract says how (or whether) it was signed.
    """
    smoothing = shipped_smoothing(state, smoothing)
    contract = {
        "schema_version": SCHEMA_VERSION,
        "task": state.task,
        "model_name": model_name,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mlflow_run_id": state.train_run_id,
        "git_commit": git_state()["git.commit"],
        "input": _input(state, framing, face_crop),
        "outputs": _outputs(state, coverage),
        "labels": (
            {"classes": state.content.classes, "unsafe_classes": state.content.unsafe_classes}
            if state.task == "content"
            else {"classes": ["age in years"], "gates": [gate_number(g.gate) for g in state.age.gates]}
        ),
        "operating_points": _operating_points(state),
        "abstention": _abstention(state, face_crop),
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
        "runtime": _runtime(state, smoothing),
        "stream": _stream(state, smoothing),
        "release": {"signing": signing_record(None)} | release,
    }
    contract["precision"] = "int8" if quantization and quantization["kept"] else "fp32"
    if quantization is not None:
        contract["quantization"] = quantization
    validate_contract(contract)
    return contract
