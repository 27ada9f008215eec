"""Optional INT8: onnxruntime static QDQ quantisation, kept only where it is faster and still faithful.

Only the network's Conv/MatMul/Gemm are quantised; normalisation, calibration and decisions stay
in fp32. The INT8 graph is kept when it is faster than fp32 at batch 1 and at batch 32 (measured
here, never assumed: QDQ speeds some CPUs and architectures up and slows others down) and when its
accuracy or MAE, ECE and gate decisions stay within the stated tolerances of the fp32 graph.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from calibration.metrics import binary_scores, multiclass_scores
from export.latency import median_seconds

TOLERANCES = {"accuracy": 0.005, "mae": 0.2, "ece": 0.01, "decision_agreement": 0.995}


class _Batches(CalibrationDataReader):
    def __init__(self, images: np.ndarray, batch: int = 32):
        self._batches = iter([{"images": images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize(fp32: Path, int8: Path, calib_images: np.ndarray) -> None:
    prepared = int8.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(int8),
        _Batches(calib_images),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"],
    )
    prepared.unlink()


@dataclass
class QuantisationVerdict:
    kept: bool
    reasons: list[str]
    latency_ms: dict[str, float]
    deltas: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def _run(path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"images": images}), strict=True))


def _quality(task: str, outputs: dict[str, np.ndarray], targets: np.ndarray, gates: list[float]) -> dict[str, float]:
    if task == "content":
        scores = multiclass_scores(outputs["probabilities"].astype(np.float64), targets)
        return {"accuracy": scores["accuracy"], "ece": scores["ece"]}
    eces = [
        binary_scores(outputs["prob_below"][:, i].astype(np.float64), targets < g)["ece"] for i, g in enumerate(gates)
    ]
    return {"mae": float(np.abs(outputs["expected_age"] - targets).mean()), "ece": float(np.mean(eces))}


def judge(
    task: str, fp32: Path, int8: Path, images: np.ndarray, targets: np.ndarray, gates: list[float], size: int
) -> QuantisationVerdict:
    """Measure INT8 against fp32 on the given (test) images, and on latency at batch 1 and 32."""
    reference, candidate = _run(fp32, images), _run(int8, images)
    before, after = _quality(task, reference, targets, gates), _quality(task, candidate, targets, gates)
    deltas = {f"{name}_delta": abs(after[name] - before[name]) for name in before}
    deltas["decision_agreement"] = float((reference["decisions"] == candidate["decisions"]).mean())
    reasons = []
    headline = "accuracy" if task == "content" else "mae"
    if deltas[f"{headline}_delta"] > TOLERANCES[headline]:
        reasons.append(f"{headline} moves by {deltas[f'{headline}_delta']:.4f} (> {TOLERANCES[headline]})")
    if deltas["ece_delta"] > TOLERANCES["ece"]:
        reasons.append(f"ECE moves by {deltas['ece_delta']:.4f} (> {TOLERANCES['ece']})")
    if deltas["decision_agreement"] < TOLERANCES["decision_agreement"]:
        reasons.append(f"decisions agree on {deltas['decision_agreement']:.4f} (< {TOLERANCES['decision_agreement']})")

    latency = {}
    sessions = {
        name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for name, path in (("fp32", fp32), ("int8", int8))
    }
    for batch in (1, 32):
        sample = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        for name, session in sessions.items():
            latency[f"{name}_batch{batch}"] = 1e3 * median_seconds(
                lambda s=session, x=sample: s.run(None, {"images": x})
            )
        if latency[f"int8_batch{batch}"] >= latency[f"fp32_batch{batch}"]:
            reasons.append(
                f"INT8 is not faster at batch {batch}: {latency[f'int8_batch{batch}']:.2f} ms vs fp32 "
                f"{latency[f'fp32_batch{batch}']:.2f} ms"
            )
    return QuantisationVerdict(not reasons, reasons, latency, deltas)
