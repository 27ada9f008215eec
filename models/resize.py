"""The one resize from any frame or crop to the network's input, used by ingest, training data and the export graph.

torch's antialiased bilinear (half-pixel centres) exports to ONNX `Resize(mode=linear, antialias=1)`
at opset 18, so the graph resizes as the cached training images were resized. The result is rounded
half-to-even and clamped to [0, 255], so the graph sees exactly the uint8 pixels a cache would hold.
On an input already at the target size it is the identity.

A cache may keep a border around what the network sees (`Framing`): each image is stored at
`cache_size`, training crops randomly inside it, and everything else (evaluation, calibration, the
graph) takes its centre `input_size` square.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def resize_to_network(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 or float NCHW (any H, W) -> float NCHW (size, size) holding integer values in [0, 255]."""
    pixels = images.float()
    if pixels.shape[-2:] != (size, size):
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return pixels.round().clamp(0.0, 255.0)


def resize_uint8(image_hwc, size: int):
    """A uint8 (H, W, 3) numpy image resized as the graph would: what ingest caches."""
    tensor = torch.tensor(image_hwc).permute(2, 0, 1)[None]  # a copy: PIL-backed arrays are read-only
    return resize_to_network(tensor, size)[0].permute(1, 2, 0).to(torch.uint8).numpy()


@dataclass(frozen=True)
class Framing:
    """A cached image of side `cache_size` and the centre square of side `input_size` the network sees."""

    cache_size: int
    input_size: int

    def __post_init__(self) -> None:
        if not 0 < self.input_size <= self.cache_size:
            raise ValueError(
                f"the network input ({self.input_size} px) must fit in the cached image ({self.cache_size} px)"
            )

    @property
    def offset(self) -> int:
        """First row and column of the centre square: floor((cache - input) / 2), in every implementation."""
        return (self.cache_size - self.input_size) // 2

    def centre_uint8(self, images_nhwc: np.ndarray) -> np.ndarray:
        """The centre squares of cached uint8 NHWC images (a view when there is no border)."""
        start, stop = self.offset, self.offset + self.input_size
        return images_nhwc[:, start:stop, start:stop]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or float NCHW frames of any size -> float NCHW network input: resize to the cache size, centre crop."""
        pixels = resize_to_network(images, self.cache_size)
        start, stop = self.offset, self.offset + self.input_size
        return pixels[..., start:stop, start:stop]

    def describe(self) -> dict:
        return {"cache_size": self.cache_size, "input_size": self.input_size, "offset": self.offset}
