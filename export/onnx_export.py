"""ONNX export with the dynamo exporter (TorchScript only as a logged fallback), checked and self-describing."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import onnx
import torch
from childsafe_runtime.integrity import METADATA_KEY
from torch import nn

from core.errors import WorkbenchError
from export.contract import MAX_SIDE, MIN_SIDE

log = logging.getLogger(__name__)
MAX_IR_VERSION = 10  # onnxruntime releases since 1.20 load IR 10
MIN_OPSET = 18  # Resize's antialias attribute exists from opset 18
EXAMPLE_SIDES = (97, 131)  # traced at a size that is neither square nor the network's, so the resize is in the graph


class ExportError(WorkbenchError):
    """The exported graph is not the graph the contract describes: nothing was published."""


def export_onnx(wrapper: nn.Module, path: Path, opset: int) -> str:
    """Write `wrapper` to `path` with dynamic batch, height and width; returns the exporter that succeeded."""
    if opset < MIN_OPSET:
        raise ExportError(
            f"export.opset={opset}: the graph resizes with antialiasing, which ONNX Resize supports from opset "
            f"{MIN_OPSET}. Set export.opset={MIN_OPSET} or later."
        )
    wrapper.eval()  # inference behaviour (batch-norm statistics, no dropout) is what gets exported
    example = torch.zeros(2, *EXAMPLE_SIDES, 3, dtype=torch.uint8)
    outputs = list(wrapper.output_names)
    side = {"min": MIN_SIDE, "max": MAX_SIDE}
    try:
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["images"],
            output_names=outputs,
            dynamic_shapes=(
                {
                    0: torch.export.Dim("batch", min=1, max=65536),
                    1: torch.export.Dim("height", **side),
                    2: torch.export.Dim("width", **side),
                },
            ),
            external_data=False,
        )
        program.save(str(path), external_data=False)
        exporter = "dynamo"
    except Exception as error:
        log.warning(
            "dynamo ONNX export failed (%s: %s); falling back to the TorchScript exporter", type(error).__name__, error
        )
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=outputs,
            dynamic_axes={"images": {0: "batch", 1: "height", 2: "width"}} | {name: {0: "batch"} for name in outputs},
        )
        exporter = "torchscript"
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    check_antialiased_resize(model, path)
    onnx.save(model, str(path))
    return exporter


def check_antialiased_resize(model: onnx.ModelProto, path: Path) -> None:
    """The graph must resize with antialiasing, as training data was resized; a plain Resize drifts (issue 15)."""
    resizes = [node for node in _all_nodes(model.graph) if node.op_type == "Resize"]
    attributes = [{a.name: onnx.helper.get_attribute_value(a) for a in node.attribute} for node in resizes]
    good = [a for a in attributes if a.get("antialias") == 1 and a.get("mode") == b"linear"]
    if not good:
        found = attributes or "no Resize at all"
        raise ExportError(
            f"{path} has no Resize(mode=linear, antialias=1) (found: {found}): the graph would not resize frames "
            "as training did. Export with the dynamo exporter at opset 18 or later, with models.resize in the wrapper."
        )


def _all_nodes(graph: onnx.GraphProto):
    """Every node, including those inside If/Loop bodies and the dynamo exporter's local functions' callers."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)


def embed_contract(path: Path, contract: dict[str, Any]) -> None:
    """Carry the contract inside the model too, so it survives losing the sidecar (anomalib's lesson)."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(contract, sort_keys=True, allow_nan=False))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
