"""Calibration as torch modules with buffers: the one implementation calibrate, evaluate and export apply.

As anomalib's post-processor does, the fitted state (calibration/content.py, calibration/age.py)
becomes registered buffers, so the exported graph carries it and no sidecar can be lost. Calibrate
measures through these modules, the evaluate and parity reference applies them in eager PyTorch,
and the export wrapper composes them into the ONNX graph: a calibration figure is always a figure
of the code that ships. An independent NumPy reference lives in tests (tests/calibration_reference.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from calibration.age import AgeCalibration
    from calibration.content import ContentCalibration
    from models.age_heads import AgeHead


class PiecewiseLinear(nn.Module):
    """np.interp with clipping, written with elementwise ops only so every exporter supports it."""

    def __init__(self, xp: list[float], fp: list[float]):
        super().__init__()
        xp_t, fp_t = torch.tensor(xp, dtype=torch.float32), torch.tensor(fp, dtype=torch.float32)
        self.register_buffer("start", xp_t[:-1])
        self.register_buffer("width", (xp_t[1:] - xp_t[:-1]).clamp_min(1e-12))
        self.register_buffer("slope", (fp_t[1:] - fp_t[:-1]) / (xp_t[1:] - xp_t[:-1]).clamp_min(1e-12))
        self.register_buffer("base", fp_t[:1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        covered = torch.minimum((x[..., None] - self.start).clamp_min(0.0), self.width)
        return self.base + (covered * self.slope).sum(dim=-1)


def as_input(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Network outputs as the float32 CPU tensor the exported graph computes on."""
    return torch.as_tensor(values).detach().to("cpu", torch.float32)


def as_output(values: torch.Tensor) -> np.ndarray:
    """The graph's float32 values widened exactly to float64, so figures and thresholds serialise as floats."""
    return values.numpy().astype(np.float64)


class ContentCalibrator(nn.Module):
    """logits -> (calibrated class probabilities, unsafe score).

    Temperature and vector scaling rescale the logits; the unsafe score pools the unsafe classes'
    probabilities and, for the isotonic method, maps that pooled score through the fitted knots.
    """

    def __init__(self, calibration: ContentCalibration):
        super().__init__()
        k = len(calibration.classes)
        vector = calibration.method == "vector"
        weight = calibration.vector_weight if vector else [1.0 / calibration.temperature] * k
        bias = calibration.vector_bias if vector else [0.0] * k
        self.register_buffer("logit_weight", torch.tensor(weight, dtype=torch.float32))
        self.register_buffer("logit_bias", torch.tensor(bias, dtype=torch.float32))
        self.register_buffer("unsafe_mask", torch.tensor(calibration.unsafe_mask, dtype=torch.float32))
        self.isotonic = (
            PiecewiseLinear(calibration.isotonic_x, calibration.isotonic_y)
            if calibration.method == "isotonic"
            else None
        )

    def pooled_unsafe(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Calibrated probabilities and the unsafe classes' summed probability, before any isotonic map."""
        probabilities = torch.softmax(logits * self.logit_weight + self.logit_bias, dim=1)
        return probabilities, (probabilities * self.unsafe_mask).sum(dim=1)

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities, unsafe = self.pooled_unsafe(logits)
        return probabilities, unsafe if self.isotonic is None else self.isotonic(unsafe)

    @torch.no_grad()
    def apply(self, logits: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        probabilities, unsafe = self(as_input(logits))
        return as_output(probabilities), as_output(unsafe)


def gate_probabilities(head: AgeHead, raw: torch.Tensor, gates: torch.Tensor, temperature) -> torch.Tensor:
    """(N, gates) P(age < T) from the head's raw outputs at `temperature` (1: the network's own)."""
    return head.prob_below(head.temper(raw, temperature), gates)


class AgeCalibrator(nn.Module):
    """An age head's raw outputs -> calibrated P(age < T) per gate, and the conformal age interval.

    Each gate uses the calibrator that cross-validated better on calib: the tempered distribution, or
    isotonic regression on the network's own P(age < T). Gates may differ, so a running maximum
    across the ascending gates keeps P(age < 13) <= P(age < 16). The interval is the expected age
    plus or minus the conformal quantile times the tempered spread, clamped to [0, max_age]; with
    `coverage` None (an uncalibrated model) there is no interval.
    """

    def __init__(self, calibration: AgeCalibration, coverage: float | None):
        super().__init__()
        self.register_buffer("temperature", torch.tensor(calibration.temperature, dtype=torch.float32))
        self.register_buffer("gates", torch.tensor([g.gate for g in calibration.gates], dtype=torch.float32))
        self.isotonic = nn.ModuleList(
            PiecewiseLinear(g.isotonic_x, g.isotonic_y) if g.method == "isotonic" else nn.Identity()
            for g in calibration.gates
        )
        self.use_isotonic = [g.method == "isotonic" for g in calibration.gates]
        self.register_buffer("max_age", torch.tensor(calibration.max_age, dtype=torch.float32))
        quantile = calibration.intervals_at(coverage).quantile if coverage is not None else float("nan")
        self.register_buffer("interval_quantile", torch.tensor(quantile, dtype=torch.float32))
        self.has_interval = coverage is not None

    def prob_below(self, head: AgeHead, raw: torch.Tensor) -> torch.Tensor:
        calibrated = gate_probabilities(head, raw, self.gates, self.temperature)
        uncalibrated = gate_probabilities(head, raw, self.gates, 1.0)
        columns, running = [], None
        for i, iso in enumerate(self.isotonic):
            column = iso(uncalibrated[:, i]) if self.use_isotonic[i] else calibrated[:, i]
            running = column if running is None else torch.maximum(running, column)
            columns.append(running)
        return torch.stack(columns, dim=1)

    def interval(
        self, head: AgeHead, raw: torch.Tensor, quantile: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low and high ends; `quantile` gives one factor per row (Mondrian groups), else the pooled one."""
        if not self.has_interval and quantile is None:
            raise ValueError("this age calibrator was built without an interval coverage")
        factor = self.interval_quantile if quantile is None else quantile
        expected = head.expected_age(raw)
        half = factor * head.spread(head.temper(raw, self.temperature))
        zero = torch.zeros_like(self.max_age)
        return torch.clamp(expected - half, min=zero, max=self.max_age), torch.clamp(
            expected + half, min=zero, max=self.max_age
        )

    def forward(self, head: AgeHead, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.prob_below(head, raw), *self.interval(head, raw)

    @torch.no_grad()
    def apply(
        self, head: AgeHead, raw: np.ndarray | torch.Tensor, quantile: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """prob_below, and interval_low/interval_high where there is an interval, as NumPy arrays."""
        raw = as_input(raw)
        values = {"prob_below": as_output(self.prob_below(head, raw))}
        if self.has_interval or quantile is not None:
            low, high = self.interval(head, raw, None if quantile is None else as_input(quantile))
            values |= {"interval_low": as_output(low), "interval_high": as_output(high)}
        return values
