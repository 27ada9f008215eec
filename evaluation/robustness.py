"""Fixed-severity capture degradations, to see how the headline metrics hold up."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter


def _per_image(images: np.ndarray, change: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(change(Image.fromarray(image)).convert("RGB")) for image in images])


def _jpeg(image: Image.Image, quality: int = 20) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(buffer)


def _occlude(images: np.ndarray, share: float = 0.3, seed: int = 0) -> np.ndarray:
    out, side = images.copy(), int(images.shape[1] * share)
    rng = np.random.default_rng(seed)
    for image in out:
        y, x = rng.integers(0, images.shape[1] - side, 2)
        image[y : y + side, x : x + side] = 128
    return out


PERTURBATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gaussian_blur_sigma1.5": lambda x: _per_image(x, lambda i: i.filter(ImageFilter.GaussianBlur(1.5))),
    "jpeg_quality20": lambda x: _per_image(x, _jpeg),
    "low_light_x0.35": lambda x: (x.astype(np.float32) * 0.35).astype(np.uint8),
    "sensor_noise_sigma15": lambda x: np.clip(x + np.random.default_rng(0).normal(0, 15, x.shape), 0, 255).astype(
        np.uint8
    ),
    "occlusion_30pct": _occlude,
}
