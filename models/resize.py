"""The one resize from any frame or crop to the network's input, used by ingest, training data and the export graph.

torch's antialiased bilinear (half-pixel centres) exports to ONNX `Resize(mode=linear, antialias=1)`
at opset 18, so the graph resizes as the cached training images were resized. The result is rounded
half-to-even and clamped to [0, 255], so the graph sees exactly the uint8 pixels a cache would hold.
On an input already at the network's size it is the identity.
"""

from __future__ import annotations

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
