"""Content calibrators: temperature (default), vector scaling, and isotonic on the unsafe score.

Each is fitted on the calib split only and reduces to a few numbers that export later turns into
graph buffers. Temperature divides every logit by one positive number, so the argmax never moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax

from calibration.isotonic import fit_isotonic
from calibration.modules import ContentCalibrator, as_input
from core.errors import WorkbenchError

METHODS = ("temperature", "vector", "isotonic")


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(-log_softmax(logits, axis=1)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    result = minimize_scalar(lambda log_t: nll(logits / np.exp(log_t), labels), bounds=(-4, 4), method="bounded")
    return float(np.exp(result.x))


def fit_vector_scaling(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = logits.shape[1]

    def loss(params: np.ndarray) -> float:
        return nll(logits * params[:k] + params[k:], labels)

    result = minimize(loss, np.concatenate([np.ones(k), np.zeros(k)]), method="L-BFGS-B")
    return result.x[:k], result.x[k:]


@dataclass
class ContentCalibration:
    """Serialisable state: what calibration.modules.ContentCalibrator turns into buffers."""

    method: str
    classes: list[str]
    unsafe_classes: list[str]
    temperature: float = 1.0
    vector_weight: list[float] = field(default_factory=list)
    vector_bias: list[float] = field(default_factory=list)
    isotonic_x: list[float] = field(default_factory=list)
    isotonic_y: list[float] = field(default_factory=list)

    @property
    def unsafe_mask(self) -> np.ndarray:
        return np.isin(self.classes, self.unsafe_classes)

    @classmethod
    def identity(cls, classes: list[str], unsafe_classes: list[str]) -> ContentCalibration:
        """The network's own probabilities (temperature 1): uncalibrated figures through the same module."""
        return cls("temperature", list(classes), list(unsafe_classes))

    @classmethod
    def fit(
        cls, method: str, logits: np.ndarray, labels: np.ndarray, classes: list[str], unsafe_classes: list[str]
    ) -> ContentCalibration:
        if method not in METHODS:
            raise WorkbenchError(f"calibration.content.method={method!r} is unknown. Valid options: {list(METHODS)}.")
        unknown = set(unsafe_classes) - set(classes)
        if unknown:
            raise WorkbenchError(
                f"calibration.content.unsafe_classes names {sorted(unknown)}, which the model does not have. "
                f"Its classes are {classes}."
            )
        state = cls(method=method, classes=list(classes), unsafe_classes=list(unsafe_classes))
        if method == "vector":
            weight, bias = fit_vector_scaling(logits, labels)
            state.vector_weight, state.vector_bias = weight.tolist(), bias.tolist()
        else:
            state.temperature = fit_temperature(logits, labels)
        if method == "isotonic":
            is_unsafe = np.isin(np.asarray(classes)[labels], unsafe_classes)
            pooled = ContentCalibrator(replace(state, method="temperature")).pooled_unsafe(as_input(logits))[1]
            state.isotonic_x, state.isotonic_y = fit_isotonic(pooled.numpy(), is_unsafe)
        return state
