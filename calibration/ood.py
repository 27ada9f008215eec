"""The out-of-distribution abstain score: how far a graph input's image statistics lie from the calib split's.

The score is a diagonal Mahalanobis distance (the mean squared z-score) over 15 statistics of the
network input, after the in-graph resize: per channel the mean, log(1 + std), log(1 + mean absolute
neighbour difference), the roughness log((1 + gradient) / (1 + std)), and the three inter-channel
correlations. Blank frames have no spread, uniform noise is rough and colour-uncorrelated at any
frame size, so both sit far from natural images. The threshold is the calib split's 0.995 quantile
(raised by a relative 1e-4, so float32 noise cannot move a calib image across it), so about 0.5% of
in-distribution inputs abstain; the calibrate stage measures that rate on calib and test.

A distance over the backbone's features was measured first and rejected: on the demo models it put
blank and noise frames at 0.1x its threshold (features collapse towards their mean) and flagged none
of the other task's images. This score is about the input, not the model: it catches frames nobody
should judge, not subtler shifts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.resize import Framing

QUANTILE = 0.995
STATISTICS = (
    *(f"{name}_{channel}" for name in ("mean", "log_std", "log_gradient", "roughness") for channel in "rgb"),
    "corr_rg",
    "corr_gb",
    "corr_rb",
)
MARGIN = 1e-4  # relative: the threshold sits this far above the quantile's calib score, beyond float32 noise
VARIANCE_FLOOR = 1e-6  # a statistic constant over the calib split must not divide by zero
BATCH = 512


def image_statistics(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 15) statistics of float NCHW pixels in [0, 255], in the order of STATISTICS; elementwise ops only."""
    mean = pixels.mean(dim=(2, 3))
    centred = pixels - mean[..., None, None]
    std = (centred * centred).mean(dim=(2, 3)).sqrt()
    gradient = (pixels[..., 1:, :] - pixels[..., :-1, :]).abs().mean(dim=(2, 3)) + (
        pixels[..., :, 1:] - pixels[..., :, :-1]
    ).abs().mean(dim=(2, 3))
    log_std, log_gradient = torch.log1p(std), torch.log1p(gradient)

    def correlation(a: int, b: int) -> torch.Tensor:
        return (centred[:, a] * centred[:, b]).mean(dim=(1, 2)) / (std[:, a] * std[:, b] + 1.0)

    correlations = torch.stack([correlation(0, 1), correlation(1, 2), correlation(0, 2)], dim=1)
    return torch.cat([mean / 255.0, log_std, log_gradient, log_gradient - log_std, correlations], dim=1)


class OODScore(nn.Module):
    """Mean squared z-score of the image statistics against the calib split: the graph's `ood_score`."""

    def __init__(self, mean: list[float], var: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("inverse_var", 1.0 / torch.tensor(var, dtype=torch.float32))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        z2 = (image_statistics(pixels) - self.mean) ** 2 * self.inverse_var
        return z2.mean(dim=1)


@dataclass
class OODCalibration:
    """What the graph's buffers and the contract's `abstention.ood` are made of."""

    mean: list[float]
    var: list[float]
    threshold: float  # a float32 value: the graph's score is float32 and is compared in float32
    quantile: float
    calib_size: int
    calib_abstention_rate: float
    test_abstention_rate: float | None = None

    def module(self) -> OODScore:
        return OODScore(self.mean, self.var)

    @classmethod
    def fit(
        cls, images: np.ndarray, framing: Framing, test_images: np.ndarray | None = None, quantile: float = QUANTILE
    ) -> OODCalibration:
        """Fit on the calib split's uint8 NHWC images, as the graph sees them after its resize; measure on test."""
        stats = statistics_of(images, framing).astype(np.float64)
        mean, var = stats.mean(axis=0), np.maximum(stats.var(axis=0), VARIANCE_FLOOR)
        fitted = cls(mean.tolist(), var.tolist(), 0.0, quantile, len(images), 0.0)
        scores = fitted.scores(images, framing)
        # Just above a calib score, never on one: the graph's float32 score may differ from this one by an ulp.
        fitted.threshold = float(np.float32(np.quantile(scores, quantile, method="higher") * (1 + MARGIN)))
        fitted.calib_abstention_rate = fitted.abstention_rate(scores)
        if test_images is not None:
            fitted.test_abstention_rate = fitted.abstention_rate(fitted.scores(test_images, framing))
        return fitted

    def scores(self, images: np.ndarray, framing: Framing) -> np.ndarray:
        """float32 scores of uint8 NHWC images of one size, through the same resize and module as the graph."""
        return _over_batches(self.module().eval(), images, framing)

    def abstention_rate(self, scores: np.ndarray) -> float:
        """Share of inputs the rule `ood_score > threshold` abstains on, compared in float32."""
        return float(np.mean(scores.astype(np.float32) > np.float32(self.threshold)))


def network_pixels(images: np.ndarray, framing: Framing) -> torch.Tensor:
    """uint8 NHWC images as the graph feeds its network: float NCHW, resized and centre-cropped by `framing`."""
    return framing(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))


def statistics_of(images: np.ndarray, framing: Framing) -> np.ndarray:
    return _over_batches(image_statistics, images, framing)


@torch.no_grad()
def _over_batches(function, images: np.ndarray, framing: Framing) -> np.ndarray:
    """`function` of the network pixels of `images`, a batch at a time (a calib split need not fit in memory)."""
    parts = [
        function(network_pixels(images[start : start + BATCH], framing)).numpy()
        for start in range(0, len(images), BATCH)
    ]
    return np.concatenate(parts)
