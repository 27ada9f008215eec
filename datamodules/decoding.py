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

import io
from dataclasses import dataclass

import numpy as np

# The runtime's pixel rules, shared rather than restated: one implementation for ingest and every consumer.
from childsafe_runtime.frames import to_rgb
from PIL import Image, ImageOps, UnidentifiedImageError


@dataclass(frozen=True)
class Decoded:
    """The RGB pixels and what was done to reach them (`notes`, e.g. 'exif_orientation=6; mode=RGBA')."""

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
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
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


def decode_image(data: bytes) -> Decoded:
    """The file's first frame as upright, opaque 8-bit RGB, or a DecodeError naming the reason."""
    image, notes = _upright(_open(data))
    try:
        rgb = to_rgb(image)
    except ValueError as error:
        raise DecodeError("unsupported_mode", f"mode {image.mode} cannot become 8-bit RGB: {error}") from error
    if image.mode != "RGB":
        notes.append(f"mode={image.mode}")
    return Decoded(np.require(rgb, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"]), "; ".join(notes))  # torch wants writable
