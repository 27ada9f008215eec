"""An independent recount of a bundle's certificates: onnxruntime on the calib split, reading only the contract.

It shares no code with export's own recount, so a mistake there (wrong positives, units or
precision) shows up as a disagreement here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd


def _calib_outputs(bundle: Path, images: np.ndarray, rows: pd.DataFrame) -> tuple[dict, dict[str, np.ndarray]]:
    """The contract, and every output of the shipped graph on `rows`' calib split."""
    contract = json.loads((bundle / "contract.json").read_text())
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    calib = (rows["split"] == "calib").to_numpy()
    outputs: dict[str, list[np.ndarray]] = {o.name: [] for o in session.get_outputs()}
    chosen = images[np.flatnonzero(calib)] if isinstance(images, np.ndarray) else images[calib]
    for start in range(0, len(chosen), 256):
        batch = np.ascontiguousarray(chosen[start : start + 256])
        for output, value in zip(outputs, session.run(None, {contract["input"]["name"]: batch}), strict=True):
            outputs[output].append(value)
    return contract, {name: np.concatenate(values) for name, values in outputs.items()}


def recount_abstention(bundle: Path, images: np.ndarray, rows: pd.DataFrame) -> tuple[float, float]:
    """(share of calib images the shipped graph's ood_score abstains on, the contract's calib_abstention_rate)."""
    contract, merged = _calib_outputs(bundle, images, rows)
    ood = contract["abstention"]["ood"]
    assert ood["rule"] == "abstain when ood_score > threshold" and ood["threshold_precision"] == "float32"
    score = merged[ood["output"]]
    assert score.dtype == np.float32
    return float(np.mean(score > np.float32(ood["threshold"]))), ood["calib_abstention_rate"]


def recount_bundle(bundle: Path, images: np.ndarray, rows: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """{point: (units the shipped graph misses, units its contract says were missed)} on `rows`' calib split."""
    contract, merged = _calib_outputs(bundle, images, rows)
    calib = (rows["split"] == "calib").to_numpy()
    units = rows.loc[calib, "subject_id"].astype(str).to_numpy()
    counts = {}
    for point in contract["operating_points"]:
        spec = point["score"]
        score = merged[spec["output"]] if "column" not in spec else merged[spec["output"]][:, spec["column"]]
        assert score.dtype == np.float32 and point["threshold_precision"] == "float32"
        assert float(np.float32(point["threshold"])) == point["threshold"]  # the JSON number is the float32 itself
        labels = rows.loc[calib, point["guarantee"]["labels"]].to_numpy()
        if contract["task"] == "age":
            positive = labels.astype(np.float32) < point["gate"]
        else:
            names = np.asarray(contract["labels"]["classes"])[labels.astype(int)]
            unsafe = contract["labels"]["unsafe_classes"]
            positive = np.isin(names, unsafe) if point["target"] == "unsafe" else names == point["target"]
        missed = pd.Series(score[positive] < np.float32(point["threshold"])).groupby(units[positive]).any()
        assert len(missed) == point["guarantee"]["calib_units"], point["name"]
        counts[point["name"]] = (int(missed.sum()), int(point["guarantee"]["calib_misses"]))
    return counts
