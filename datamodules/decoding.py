"""Decoding any image file into the one pixel form the workbench trusts: 8-bit RGB, upright, opaque.

The export contract (`input.decoding`) promises consumers the same normalisations, so a model
sees at runtime what it was trained on:

- EXIF orientation is applied first (`ImageOps.exif_transpose`); every later step, the PDQ hash
  and the face box included, refers to the upright image.
- Only the first frame of an animated file (GIF, WebP, multi-page TIFF) is used.
- Alpha is composited on black: out = round(colour x alpha / 255), so a transparent pixel is
  black whatever colour the file hides under it. Palette transparency counts as alpha.
- Greyscale, bilevel, palette and CMYK become RGB with Pillow's own conversion (no ICC colour
  management). 16-bit samples keep their high byte (v >> 8), as Pillow does for 16-bit colour PNGs.
- Float images (Pillow mode F) and modes Pillow cannot convert to RGB are refused as `unsupported_mode`.

Only Pillow and numpy are used, so a runtime can share this module without the workbench.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


@dataclass(frozen=True)
class Decoded:
    """The RGB pixels and what was done to reach them (`notes`, e.g. 'exif_orientation=6; alpha_on_black')."""

    rgb: np.ndarray  # uint8 (H, W, 3)
    notes: str


class DecodeError(Exception):
    """A file that yields no pixels; `reason` is the quarantine reason, the message the decoder's own words."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _open(data: bytes) -> Image.Image:
    """Open and fully decode, naming what went wrong in terms of the file rather than an in-memory buffer."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except UnidentifiedImageError as error:
        raise DecodeError(
            "undecodable",
            f"Pillow recognises no image format in these {len(data)} bytes (they start with {data[:12]!r})",
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        text = f"{type(error).__name__}: {error}"
        cut = "truncated" in text.lower() or "broken data stream" in text.lower()
        raise DecodeError("truncated" if cut else "undecodable", f"the decoder stopped with {text}") from error


def _upright(image: Image.Image) -> tuple[Image.Image, list[str]]:
    orientation = image.getexif().get(0x0112, 1)
    if orientation in (1, None):
        return image, []
    try:
        return ImageOps.exif_transpose(image), [f"exif_orientation={orientation}"]
    except (OSError, ValueError, TypeError) as error:
        raise DecodeError("undecodable", f"its EXIF orientation {orientation!r} cannot be applied ({error})") from error


def _eight_bit_rgb(image: Image.Image) -> tuple[np.ndarray, list[str]]:
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        grey = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2), [f"mode={mode}->RGB (high byte)"]
    if mode == "F":
        raise DecodeError("unsupported_mode", "its pixels are 32-bit floats (mode F), which have no agreed 8-bit range")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if "A" in image.getbands() or "a" in image.getbands():
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        over_black = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
        return over_black.astype(np.uint8), [f"mode={mode}->RGB", "alpha_on_black"]
    try:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except ValueError as error:
        raise DecodeError("unsupported_mode", f"Pillow cannot convert mode {mode} to RGB ({error})") from error
    return rgb, [] if mode == "RGB" else [f"mode={mode}->RGB"]


def decode_image(data: bytes) -> Decoded:
    """The file's first frame as upright, opaque 8-bit RGB, or a DecodeError naming the reason."""
    image, notes = _upright(_open(data))
    rgb, more = _eight_bit_rgb(image)
    return Decoded(np.ascontiguousarray(rgb), "; ".join(notes + more))
