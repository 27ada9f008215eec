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
from calibration.modules import AgeCalibrator, ContentCalibrator
from calibration.ood import OODCalibration
from calibration.operating_points import OperatingPoint
from models.resize import Framing


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
        self.calibrator = ContentCalibrator(calibration)
        # Each operating point scores either one class probability or the unsafe score (column -1).
        columns = [calibration.classes.index(p.target) if p.target != "unsafe" else -1 for p in points]
        self.register_buffer("score_columns", torch.tensor(columns, dtype=torch.long))
        self.register_buffer("thresholds", _thresholds(points))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pixels, ood_score = self.network_input(images)
        logits = self.module.classifier(self.module.features(pixels))
        probabilities, unsafe = self.calibrator(logits)
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
        self.calibrator = AgeCalibrator(calibration, coverage)
        self.register_buffer("thresholds", _thresholds(points))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        head = self.module.head
        pixels, ood_score = self.network_input(images)
        raw = head(self.module.features(pixels))
        prob_below, low, high = self.calibrator(head, raw)
        expected = head.expected_age(raw)
        return expected, prob_below, low, high, ood_score, prob_below >= self.thresholds
