"""Decoding an image file's bytes at ingest into the pixels the runtime also decodes: 8-bit RGB, upright, opaque.

The export contract (`input.decoding`) promises consumers the same normalisations, and the pixel
rules are the runtime's own function (`childsafe_runtime.frames`), so a model sees at runtime what
it was trained on:

- EXIF orientation is applied first (`ImageOps.exif_transpose`); every later step, the PDQ hash
  and the face box included, refers to the upright image.
- Only the first frame of an animated file (GIF, WebP, multi-page TIFF) is used.
- Alpha is composited on black: out = round(colour x alpha / 255), so a transparent pixel is
  black whatever colour the file hides under it. Palette transparency counts as alpha.
- Greyscale, bilevel, palette and CMYK become RGB with Pillow's own conversion (no ICC colour
  management). 16-bit samples keep their high byte (v >> 8), as Pillow does for 16-bit colour PNGs.
- Float images (Pillow mode F) and modes Pillow cannot convert to RGB are refused as `unsupported_mode`.

What ingest adds is its own reporting: the quarantine reason, the decoder's words about the file
(never an in-memory buffer's repr), and a note of each normalisation applied (`normalised`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The one decoder, shared with every consumer so a model sees at runtime what it was trained on.
from childsafe_runtime.frames import DecodeError, decode_pixels

__all__ = ["DecodeError", "Decoded", "decode_image"]


@dataclass(frozen=True)
class Decoded:
    """The RGB pixels and what was done to reach them (`notes`, e.g. 'exif_orientation=6; mode=RGBA')."""

    rgb: np.ndarray  # uint8 (H, W, 3)
    notes: str


def decode_image(data: bytes) -> Decoded:
    """The file's first frame as upright, opaque 8-bit RGB, or a DecodeError naming the reason."""
    rgb, notes = decode_pixels(data)
    return Decoded(np.require(rgb, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"]), "; ".join(notes))  # torch wants writable
