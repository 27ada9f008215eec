"""The face-crop convention, the one implementation that the workbench's ingest and every runtime share.

A box is `x0, y0, x1, y1` in pixels of the frame after EXIF orientation (x right, y down, x1 and
y1 exclusive edges). It is grown by `margin` of its width and height on each side, widened to a
square about its centre on the longer side when `square`, and rounded with floor(v + 0.5) (not
Python's round-half-to-even, so a JavaScript or C++ client rounds identically). The region is
half-open, [rx0, rx1) x [ry0, ry1); pixels outside the frame are black. The crop is returned at
the frame's own resolution: the graph resizes it to the network's input, as training did.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class BoxError(ValueError):
    """A face box that cannot be cropped; the message names the box and what is wrong with it."""


@dataclass(frozen=True)
class CropConvention:
    margin: float = 0.4
    square: bool = True
    min_face_side: float = 16.0  # pixels, of the box before the margin; smaller faces are abstained on

    def describe(self) -> dict:
        """The convention as the export contract states it."""
        return {
            "box": "x0, y0, x1, y1 in pixels of the frame after EXIF orientation; x1, y1 are exclusive edges",
            "margin": self.margin,
            "square": self.square,
            "region": (
                "centre (cx, cy) = ((x0 + x1) / 2, (y0 + y1) / 2); half sizes hw = (x1 - x0) * (0.5 + margin), "
                "hh = (y1 - y0) * (0.5 + margin); when square, hw = hh = max(hw, hh)"
            ),
            "rounding": "rx0 = floor(cx - hw + 0.5), ry0 = floor(cy - hh + 0.5), rx1 = floor(cx + hw + 0.5), "
            "ry1 = floor(cy + hh + 0.5); the region is [rx0, rx1) x [ry0, ry1)",
            "out_of_frame": "pixels of the region outside the frame are black (0, 0, 0)",
            "min_face_side": self.min_face_side,
            "too_small": "a box whose shorter side is below min_face_side pixels is abstained on (face_too_small)",
            "resize": "none here: the crop goes to the graph at its own size, and the graph resizes it",
            "function": "childsafe_runtime.crop.crop_face",
        }


def _round(value: float) -> int:
    return math.floor(value + 0.5)


def check_box(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """The box as four floats, or a BoxError saying which rule it breaks."""
    if len(box) != 4:
        raise BoxError(f"box {list(box)} must have 4 numbers x0, y0, x1, y1")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise BoxError(f"box {list(box)} has a non-finite coordinate")
    if x1 <= x0 or y1 <= y0:
        raise BoxError(f"box {list(box)} is inverted or empty: it needs x1 > x0 and y1 > y0")
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise BoxError(f"box {list(box)} lies entirely outside the {width}x{height} frame")
    return x0, y0, x1, y1


def face_region(box: Sequence[float], width: int, height: int, convention: CropConvention) -> tuple[int, int, int, int]:
    """The integer region [rx0, rx1) x [ry0, ry1) that the convention cuts from a width x height frame."""
    x0, y0, x1, y1 = check_box(box, width, height)
    half_w, half_h = (x1 - x0) * (0.5 + convention.margin), (y1 - y0) * (0.5 + convention.margin)
    if convention.square:
        half_w = half_h = max(half_w, half_h)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return _round(cx - half_w), _round(cy - half_h), _round(cx + half_w), _round(cy + half_h)


def is_too_small(box: Sequence[float], convention: CropConvention) -> bool:
    x0, y0, x1, y1 = (float(v) for v in box)
    return min(x1 - x0, y1 - y0) < convention.min_face_side


def crop_face(frame: np.ndarray, box: Sequence[float], convention: CropConvention) -> np.ndarray:
    """uint8 (h, w, 3): the face region of an RGB uint8 frame (H, W, 3), black where it leaves the frame."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise BoxError(f"frame must be uint8 (H, W, 3) RGB, got {frame.dtype} {frame.shape}")
    height, width = frame.shape[:2]
    rx0, ry0, rx1, ry1 = face_region(box, width, height, convention)
    out = np.zeros((ry1 - ry0, rx1 - rx0, 3), dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(rx0, 0), max(ry0, 0), min(rx1, width), min(ry1, height)
    out[sy0 - ry0 : sy1 - ry0, sx0 - rx0 : sx1 - rx0] = frame[sy0:sy1, sx0:sx1]
    return out
