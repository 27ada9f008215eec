"""Drawing primitives and camera nuisances shared by the synthetic face and content generators.

Shapes are drawn as soft masks on a normalised coordinate grid so that pose (rotation, scale,
translation) is applied once to the grid and every shape follows it, with anti-aliased edges.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates in [-1, 1], already moved by the camera pose."""

    x: np.ndarray
    y: np.ndarray
    pixel: float  # size of one pixel in grid units, for anti-aliasing

    @classmethod
    def posed(cls, size: int, angle_deg: float = 0.0, scale: float = 1.0, shift: tuple[float, float] = (0, 0)):
        ticks = (np.arange(size) + 0.5) / size * 2.0 - 1.0
        yy, xx = np.meshgrid(ticks, ticks, indexing="ij")
        xx, yy = (xx - shift[0]) / scale, (yy - shift[1]) / scale
        theta = np.deg2rad(angle_deg)
        cos, sin = np.cos(theta), np.sin(theta)
        return cls(x=cos * xx + sin * yy, y=-sin * xx + cos * yy, pixel=2.0 / size / scale)


def soft_step(signed_distance: np.ndarray, pixel: float) -> np.ndarray:
    """1 inside (positive distance), 0 outside, with a one-pixel ramp."""
    return np.clip(signed_distance / pixel + 0.5, 0.0, 1.0)


def ellipse(grid: Grid, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    radial = np.sqrt(((grid.x - cx) / rx) ** 2 + ((grid.y - cy) / ry) ** 2)
    return soft_step((1.0 - radial) * min(rx, ry), grid.pixel)


def paint(canvas: np.ndarray, mask: np.ndarray, colour) -> None:
    """Alpha-blend a flat colour into an (H, W, 3) float canvas in place."""
    alpha = mask[..., None]
    canvas *= 1.0 - alpha
    canvas += alpha * np.asarray(colour, dtype=canvas.dtype)


@dataclass(frozen=True)
class CameraNuisance:
    """Capture conditions drawn per image: they vary, the label does not."""

    brightness: float
    light_gradient: tuple[float, float]
    blur_sigma: float
    noise_sigma: float
    jpeg_quality: int

    @classmethod
    def draw(cls, rng: np.random.Generator) -> CameraNuisance:
        return cls(
            brightness=float(rng.uniform(0.7, 1.2)),
            light_gradient=(float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.25, 0.25))),
            blur_sigma=float(rng.choice([0.0, 0.0, rng.uniform(0.3, 1.0)])),
            noise_sigma=float(rng.uniform(0.0, 0.03)),
            jpeg_quality=int(rng.integers(40, 96)),
        )

    def apply(self, canvas: np.ndarray, grid: Grid, rng: np.random.Generator) -> np.ndarray:
        """Light, blur, sensor noise and JPEG: returns the final uint8 image."""
        light = self.brightness * (1.0 + self.light_gradient[0] * grid.x + self.light_gradient[1] * grid.y)
        image = canvas * light[..., None] + rng.normal(0.0, self.noise_sigma, canvas.shape)
        pil = Image.fromarray(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8))
        if self.blur_sigma > 0:
            pil = pil.filter(ImageFilter.GaussianBlur(self.blur_sigma))
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=self.jpeg_quality)
        return np.asarray(Image.open(buffer).convert("RGB"))
