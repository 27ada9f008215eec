"""Bundles for the runtime consumer's tests: small stand-in graphs with a v2 contract, and real exported ones.

The stand-in graph (built with onnx.helper, no torch) follows the v2 graph convention: uint8 RGB NHWC of
any size, resized in the graph (Resize, antialias=1) to 64x64, and every output the contract lists. Its
"age" is the mean brightness (0 -> 0 years, 255 -> 80 years), so a test knows each face's answer in
advance; its ood_score is how far the mean is from mid-grey, so a black or white frame is out of
distribution. The real bundles come from the exporter (tests/integration/test_export.py's helpers).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from childsafe_runtime.integrity import SUMS_FILE, sums_text
from onnx import TensorProto, helper

NETWORK = 64
GATES = (13, 16, 18)
THRESHOLDS = (0.9, 0.85, 0.8)  # P(age < gate) = 1 - brightness / 255 at or above these blocks
OOD_THRESHOLD = 0.9  # ood_score = |mean - 127.5| / 127.5


def _const(name: str, values, dtype=np.float32) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(np.asarray(values, dtype)))


def stand_in_graph(task: str) -> onnx.ModelProto:
    """The v2 graph shape with a brightness 'model': see the module docstring."""
    nodes = [
        helper.make_node("Cast", ["images"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["pixels"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Shape", ["nchw"], ["shape"]),
        _const("starts", [0], np.int64),
        _const("ends", [2], np.int64),
        helper.make_node("Slice", ["shape", "starts", "ends"], ["batch_channels"]),
        _const("spatial", [NETWORK, NETWORK], np.int64),
        helper.make_node("Concat", ["batch_channels", "spatial"], ["sizes"], axis=0),
        helper.make_node("Resize", ["nchw", "", "", "sizes"], ["resized"], mode="linear", antialias=1),
        _const("all_but_batch", [1, 2, 3], np.int64),
        helper.make_node("ReduceMean", ["resized", "all_but_batch"], ["mean"], keepdims=0),
        _const("scale", 1 / 255.0),
        helper.make_node("Mul", ["mean", "scale"], ["brightness"]),
        _const("mid", 0.5),
        helper.make_node("Sub", ["brightness", "mid"], ["centred"]),
        helper.make_node("Abs", ["centred"], ["distance"]),
        _const("two", 2.0),
        helper.make_node("Mul", ["distance", "two"], ["ood_score"]),
        _const("one_axis", [1], np.int64),
    ]
    if task == "age":
        nodes += [
            _const("years", 80.0),
            helper.make_node("Mul", ["brightness", "years"], ["expected_age"]),
            _const("half_width", 5.0),
            helper.make_node("Sub", ["expected_age", "half_width"], ["interval_low"]),
            helper.make_node("Add", ["expected_age", "half_width"], ["interval_high"]),
            _const("one", 1.0),
            helper.make_node("Sub", ["one", "brightness"], ["young"]),
            helper.make_node("Unsqueeze", ["young", "one_axis"], ["young_column"]),
            helper.make_node("Concat", ["young_column"] * len(GATES), ["prob_below"], axis=1),
            _const("thresholds", THRESHOLDS),
            helper.make_node("GreaterOrEqual", ["prob_below", "thresholds"], ["decisions"]),
        ]
        outputs = [("expected_age", 1), ("prob_below", 2), ("interval_low", 1), ("interval_high", 1)]
    else:
        nodes += [
            helper.make_node("Unsqueeze", ["brightness", "one_axis"], ["bright_column"]),
            _const("one", 1.0),
            helper.make_node("Sub", ["one", "bright_column"], ["dark_column"]),
            _const("half", 0.5),
            helper.make_node("Mul", ["dark_column", "half"], ["shared"]),
            helper.make_node("Concat", ["bright_column", "shared", "shared"], ["probabilities"], axis=1),
            helper.make_node("Squeeze", ["dark_column", "one_axis"], ["unsafe_score"]),
            helper.make_node("Concat", ["shared", "dark_column"], ["scores"], axis=1),
            _const("thresholds", [0.3, 0.6]),
            helper.make_node("GreaterOrEqual", ["scores", "thresholds"], ["decisions"]),
        ]
        outputs = [("probabilities", 2), ("unsafe_score", 1)]
    outputs += [("ood_score", 1)]
    graph = helper.make_graph(
        nodes,
        f"stand-in-{task}",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", "height", "width", 3])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch"][:rank] + [None] * (rank - 1))
            for name, rank in outputs
        ]
        + [helper.make_tensor_value_info("decisions", TensorProto.BOOL, ["batch", None])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def stand_in_contract(task: str) -> dict:
    """The v2 contract fields the consumer reads, for the stand-in graph."""
    rule = "decision = score >= threshold"
    if task == "age":
        names = [f"gate{g}" for g in GATES]
        outputs = [
            {"name": "expected_age"},
            {"name": "prob_below", "columns": [f"P(age < {g})" for g in GATES]},
            {"name": "interval_low"},
            {"name": "interval_high"},
        ]
        points = [
            {"name": n, "gate": g, "threshold": t, "rule": rule}
            for n, g, t in zip(names, GATES, THRESHOLDS, strict=True)
        ]
    else:
        names = ["recall_explicit", "recall_unsafe"]
        outputs = [{"name": "probabilities", "columns": ["safe", "suggestive", "explicit"]}, {"name": "unsafe_score"}]
        points = [{"name": n, "rule": rule} for n in names]
    contract = {
        "schema_version": 2,
        "task": task,
        "model_name": f"stand-in-{task}",
        "created_at": datetime(2026, 12, 1, tzinfo=UTC).isoformat(timespec="seconds"),
        "mlflow_run_id": "0123456789abcdef",
        "git_commit": "f" * 40,
        "input": {"name": "images", "min_side": 16, "max_side": 4096, "network_size": NETWORK},
        "outputs": [*outputs, {"name": "ood_score"}, {"name": "decisions", "columns": names}],
        "operating_points": points,
        "abstention": {
            "ood": {"output": "ood_score", "threshold": OOD_THRESHOLD, "rule": "abstain when ood_score > threshold"}
        },
        "runtime": {
            "smoothing": {"method": "k_of_n", "k": 3, "n": 5, "frame_rate_hz": 5},
            "no_decision": {"no_face_seconds": 2.0},
        },
    }
    if task == "age":
        contract["input"]["face_crop"] = {"margin": 0.4, "square": True, "min_face_side": 16}
    return contract


def write_bundle(folder: Path, model: onnx.ModelProto, contract: dict) -> Path:
    """A bundle folder as the exporter lays it out: the contract embedded and beside the model, SHA256SUMS."""
    folder.mkdir(parents=True, exist_ok=True)
    helper.set_model_props(model, {"childsafe_contract": json.dumps(contract)})
    onnx.save(model, folder / "model.onnx")
    (folder / "contract.json").write_text(json.dumps(contract, indent=2))
    (folder / "model_card.md").write_text(f"# {contract['model_name']}\n")
    (folder / SUMS_FILE).write_text(sums_text(folder))
    return folder
