"""The in-graph resize: the parity gate checks it on frames of several sizes and catches a graph without it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from export_cases import SIZE, content_case, data

from calibration.ood import OODCalibration
from export.onnx_export import ExportError, check_antialiased_resize, export_onnx
from export.parity import FRAMES_PER_SIZE, ParityReport, check_sizes, frames_at
from export.pipeline import build_wrapper
from models.resize import Framing

REQUIRED_SIZES = {"97x131", "480x640", "720x1280"}


@pytest.fixture(scope="module")
def case():
    module, state, target = content_case("small_cnn", "temperature")
    images, rows = data(target)
    calib = images[(rows["split"] == "calib").to_numpy()]
    return module, replace(state, ood=OODCalibration.fit(calib, Framing(SIZE, SIZE))), calib


def _plain_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """A bilinear shrink without antialiasing: what a runtime that resizes frames itself typically does."""
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
    return resized.round().clamp(0.0, 255.0)


def _wrapper_resizing_with(resize, module, state):
    """The export wrapper with its in-graph resize replaced (no border here, so the framing is the resize)."""
    wrapper = build_wrapper(module, state, 0.9)
    wrapper.network_input.framing = lambda images: resize(images, SIZE)
    return wrapper


def _sizes_report(module, state, calib, model) -> ParityReport:
    report = ParityReport()
    check_sizes(module, state, model, calib, 0.9, report)
    return report


def test_the_graph_equals_resize_then_model_at_every_size(case, tmp_path):
    module, state, calib = case
    model = tmp_path / "model.onnx"
    export_onnx(build_wrapper(module, state, 0.9), model, 18)
    report = _sizes_report(module, state, calib, model)
    assert report.passed, report.failures
    assert len(report.sizes) >= 5 and set(report.sizes) >= REQUIRED_SIZES
    assert all(size["max_abs_diff"]["probabilities"] <= 1e-4 for size in report.sizes.values())
    frames = frames_at(calib[:2], 97, 131)
    assert frames.shape == (2, 97, 131, 3) and np.array_equal(frames, frames_at(calib[:2], 97, 131))


def test_a_plain_non_antialiased_resize_is_refused_at_export_and_by_the_parity_gate(case, tmp_path, monkeypatch):
    module, state, calib = case
    monkeypatch.setattr("export.onnx_export.check_antialiased_resize", lambda *_: None)  # to reach the parity gate
    model = tmp_path / "model.onnx"
    export_onnx(_wrapper_resizing_with(_plain_resize, module, state), model, 18)
    with pytest.raises(ExportError, match=r"no Resize\(mode=linear, antialias=1\)"):
        check_antialiased_resize(onnx.load(str(model)), model)
    report = _sizes_report(module, state, calib, model)
    assert any(f.startswith("frames of 720x1280: output 'probabilities' differs") for f in report.failures)
    assert not any(f.startswith("frames of 64x64") for f in report.failures)  # the identity size agrees


def test_a_graph_without_the_resize_is_caught(case, tmp_path):
    """A v1-style graph fixed at the network size: every other frame size fails the gate by name."""
    module, state, calib = case
    wrapper = _wrapper_resizing_with(lambda images, size: images.float(), module, state).eval()
    model = tmp_path / "model.onnx"
    example = torch.zeros(FRAMES_PER_SIZE, SIZE, SIZE, 3, dtype=torch.uint8)
    names = {"input_names": ["images"], "output_names": list(wrapper.output_names)}
    torch.onnx.export(wrapper, (example,), dynamo=True, opset_version=18, **names).save(str(model))
    with pytest.raises(ExportError, match="no Resize at all"):
        check_antialiased_resize(onnx.load(str(model)), model)
    failures = _sizes_report(module, state, calib, model).failures
    assert any(f.startswith("frames of 480x640: the graph refused them") for f in failures), failures
    assert not any(f.startswith("frames of 64x64") for f in failures)  # at its one size it still agrees
