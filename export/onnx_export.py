"""ONNX export with the dynamo exporter (TorchScript only as a logged fallback), checked and self-describing."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from export.contract import METADATA_KEY

log = logging.getLogger(__name__)
MAX_IR_VERSION = 10  # onnxruntime releases since 1.20 load IR 10


def export_onnx(wrapper: nn.Module, image_size: int, path: Path, opset: int) -> str:
    """Write `wrapper` to `path` with a dynamic batch; returns the exporter that succeeded."""
    wrapper.eval()  # inference behaviour (batch-norm statistics, no dropout) is what gets exported
    example = torch.zeros(2, image_size, image_size, 3, dtype=torch.uint8)
    outputs = list(wrapper.output_names)
    try:
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["images"],
            output_names=outputs,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
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
            dynamic_axes={name: {0: "batch"} for name in ["images", *outputs]},
        )
        exporter = "torchscript"
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return exporter


def embed_contract(path: Path, contract: dict[str, Any]) -> None:
    """Carry the contract inside the model too, so it survives losing the sidecar (anomalib's lesson)."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(contract, sort_keys=True, allow_nan=False))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
