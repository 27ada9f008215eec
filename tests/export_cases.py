"""Small, deterministic export cases (untrained small CNNs, hand-made calibration) shared by the export tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from calibration.age import AgeCalibration, ConformalIntervals, GateCalibration
from calibration.content import ContentCalibration
from calibration.operating_points import OperatingPoint
from calibration.state import CalibrationState
from models.age_module import AgeModule
from models.content_module import ContentModule

SIZE, N = 64, 48
CLASSES = ["safe", "suggestive", "explicit"]


def point(name: str, threshold: float, target: str, gate: float | None = None) -> OperatingPoint:
    """A point at a fixed threshold; the export tests replace its counts with what the data really gives."""
    labels = "age" if target == "minor" else "label"
    return OperatingPoint(name, threshold, 0.5, 0.95, 1, 0, 1.0, None, 0, target=target, gate=gate, labels=labels)


def age_case(backbone: str, head: str):
    torch.manual_seed(0)
    module = AgeModule({"name": backbone}, {"kind": head}, {"lr": 1e-3, "weight_decay": 0.0}, image_size=SIZE).eval()
    calibration = AgeCalibration(
        temperature=1.3,
        gates=[
            GateCalibration(13.0, "isotonic", {}, [0.0, 0.2, 0.6, 1.0], [0.0, 0.1, 0.7, 1.0]),
            GateCalibration(16.0, "temperature", {}),
            GateCalibration(18.0, "temperature", {}),
        ],
        intervals=[ConformalIntervals(0.9, 1.6, 300)],
        calib_size=300,
        max_age=100.0,
    )
    points = [point(f"gate{g}", 0.4, "minor", g) for g in (13, 16, 18)]
    state = CalibrationState("age", None, "x.ckpt", 0.95, age=calibration, operating_points=points)
    return module, state, "age"


def content_case(backbone: str, method: str = "isotonic"):
    torch.manual_seed(0)
    module = ContentModule({"name": backbone}, {"lr": 1e-3, "weight_decay": 0.0}, classes=CLASSES, image_size=SIZE)
    calibration = ContentCalibration(
        method,
        CLASSES,
        ["suggestive", "explicit"],
        temperature=1.7,
        isotonic_x=[0.0, 0.5, 1.0],
        isotonic_y=[0.05, 0.4, 0.95],
    )
    state = CalibrationState(
        "content",
        None,
        "x.ckpt",
        0.95,
        content=calibration,
        operating_points=[point("recall_explicit", 0.3, "explicit"), point("recall_unsafe", 0.5, "unsafe")],
    )
    return module.eval(), state, "label"


def data(target: str):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
    rows = pd.DataFrame(
        {
            "split": ["calib", "test"] * (N // 2),
            "subject_id": [f"s{i // 2}" for i in range(N)],
            target: rng.uniform(0, 80, N) if target == "age" else rng.integers(0, 3, N),
            "sex": rng.choice(["female", "male"], N),
        }
    )
    return images, rows
