"""The crop convention: how a face box becomes the square network input, at ingest and at runtime alike.

The box (x0, y0, x1, y1 in pixels) is grown by `box_margin` of its width/height on each side, then
(if `square`) widened to a square about its centre using the longer side; parts outside the photo
are black. Without a box the whole image is used. The result is resized bilinearly to `size`.
The export contract states the same numbers (`input.face_crop`), so a consumer crops identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class CropConvention:
    size: int = 64
    box_margin: float = 0.4
    square: bool = True


def crop_box(box: tuple[float, ...], convention: CropConvention) -> tuple[int, int, int, int] | None:
    if len(box) != 4 or not np.all(np.isfinite(box)):
        return None
    x0, y0, x1, y1 = box
    half_w, half_h = (x1 - x0) * (0.5 + convention.box_margin), (y1 - y0) * (0.5 + convention.box_margin)
    if convention.square:
        half_w = half_h = max(half_w, half_h)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return round(cx - half_w), round(cy - half_h), round(cx + half_w), round(cy + half_h)


def crop_and_resize(image: Image.Image, box: tuple[float, ...], convention: CropConvention) -> np.ndarray:
    """uint8 (size, size, 3): the face crop when there is a box, else the whole image."""
    region = crop_box(box, convention)
    cropped = image.crop(region) if region is not None else image
    size = convention.size
    return np.asarray(cropped.resize((size, size), Image.BILINEAR), dtype=np.uint8)
