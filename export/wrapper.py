"""The export wrapper: resize + normalisation + network + calibration + decisions in one graph.

As in anomalib, everything the runtime needs to turn pixels into a decision lives in registered
buffers, so the ONNX file carries it and no sidecar can be lost: input is uint8 RGB NHWC of any
height and width (a whole frame for content, a face crop for age), the graph resizes it with the
one antialiased resize training data went through (models.resize), normalises, applies the
calibration fitted on the calib split, emits one boolean per operating point (True = block: a
likely minor at that gate, or content to filter), and the out-of-distribution abstain score.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from calibration.age import AgeCalibration
from calibration.content import ContentCalibration
from calibration.ood import OODCalibration
from calibration.operating_points import OperatingPoint
from models.resize import Framing


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


class NetworkInput(nn.Module):
    """uint8 NHWC frames of any size -> what the network was trained on, and the abstain score of that input."""

    def __init__(self, framing: Framing, ood: OODCalibration):
        super().__init__()
        self.framing = framing
        self.ood = ood.module()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self.framing(images.permute(0, 3, 1, 2))
        return pixels, self.ood(pixels)


def _thresholds(points: list[OperatingPoint]) -> torch.Tensor:
    return torch.tensor([p.threshold for p in points], dtype=torch.float32)


class ContentExportWrapper(nn.Module):
    output_names = ("probabilities", "unsafe_score", "ood_score", "decisions")

    def __init__(
        self, module: nn.Module, calibration: ContentCalibration, points: list[OperatingPoint], ood: OODCalibration
    ):
        super().__init__()
        self.module = copy.deepcopy(module).eval()
        self.network_input = NetworkInput(module.framing, ood)
        k = len(calibration.classes)
        weight = calibration.vector_weight or [1.0 / calibration.temperature] * k
        bias = calibration.vector_bias or [0.0] * k
        self.register_buffer("logit_weight", torch.tensor(weight, dtype=torch.float32))
        self.register_buffer("logit_bias", torch.tensor(bias, dtype=torch.float32))
        self.register_buffer("unsafe_mask", torch.tensor(calibration.unsafe_mask, dtype=torch.float32))
        self.isotonic = (
            PiecewiseLinear(calibration.isotonic_x, calibration.isotonic_y)
            if calibration.method == "isotonic"
            else None
        )
        # Each operating point scores either one class probability or the unsafe score (column -1).
        columns = [calibration.classes.index(p.target) if p.target != "unsafe" else -1 for p in points]
        self.register_buffer("score_columns", torch.tensor(columns, dtype=torch.long))
        self.register_buffer("thresholds", _thresholds(points))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pixels, ood_score = self.network_input(images)
        logits = self.module.classifier(self.module.features(pixels))
        probabilities = torch.softmax(logits * self.logit_weight + self.logit_bias, dim=1)
        unsafe = (probabilities * self.unsafe_mask).sum(dim=1)
        if self.isotonic is not None:
            unsafe = self.isotonic(unsafe)
        scores = torch.cat([probabilities, unsafe[:, None]], dim=1)
        chosen = scores.index_select(1, torch.where(self.score_columns < 0, scores.shape[1] - 1, self.score_columns))
        return probabilities, unsafe, ood_score, chosen >= self.thresholds


class AgeExportWrapper(nn.Module):
    output_names = ("expected_age", "prob_below", "interval_low", "interval_high", "ood_score", "decisions")

    def __init__(
        self,
        module: nn.Module,
        calibration: AgeCalibration,
        points: list[OperatingPoint],
        coverage: float,
        ood: OODCalibration,
    ):
        super().__init__()
        self.module = copy.deepcopy(module).eval()
        self.network_input = NetworkInput(module.framing, ood)
        self.register_buffer("temperature", torch.tensor(calibration.temperature, dtype=torch.float32))
        self.register_buffer("gates", torch.tensor([g.gate for g in calibration.gates], dtype=torch.float32))
        self.isotonic = nn.ModuleList(
            PiecewiseLinear(g.isotonic_x, g.isotonic_y) if g.method == "isotonic" else nn.Identity()
            for g in calibration.gates
        )
        self.use_isotonic = [g.method == "isotonic" for g in calibration.gates]
        quantile = calibration.intervals_at(coverage).quantile
        self.register_buffer("interval_quantile", torch.tensor(quantile, dtype=torch.float32))
        self.register_buffer("max_age", torch.tensor(calibration.max_age, dtype=torch.float32))
        self.register_buffer("thresholds", _thresholds(points))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        head = self.module.head
        pixels, ood_score = self.network_input(images)
        raw = head(self.module.features(pixels))
        tempered = head.temper(raw, self.temperature)
        calibrated, uncalibrated = head.prob_below(tempered, self.gates), head.prob_below(raw, self.gates)
        columns, running = [], None
        for i, iso in enumerate(self.isotonic):
            column = iso(uncalibrated[:, i]) if self.use_isotonic[i] else calibrated[:, i]
            running = column if running is None else torch.maximum(running, column)  # non-decreasing in T
            columns.append(running)
        prob_below = torch.stack(columns, dim=1)
        expected = head.expected_age(raw)
        half = self.interval_quantile * head.spread(tempered)
        low = torch.clamp(expected - half, min=torch.zeros_like(self.max_age), max=self.max_age)
        high = torch.clamp(expected + half, min=torch.zeros_like(self.max_age), max=self.max_age)
        return expected, prob_below, low, high, ood_score, prob_below >= self.thresholds
