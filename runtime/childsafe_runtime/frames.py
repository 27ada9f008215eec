"""Reading frames as the contract's `input.decoding` says: what the graph is fed, and what the box coordinates mean.

Every image is decoded to 8-bit RGB (H, W, 3) after its EXIF orientation is applied, so a box from a
detector that saw the upright frame cuts the same pixels here. Alpha is composited on black;
greyscale, palette, CMYK and 16-bit images are converted. Only the first frame of a GIF is read.
An input that cannot be read is reported by name (`Unreadable`) and the caller goes on with the next one:
one bad frame must not stop a stream, nor pass silently.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
MAX_BAD_FRAMES_IN_A_ROW = 10  # more undecodable frames in a row than this and the rest of the file counts as lost


class InputError(Exception):
    """An input (file, folder or video) that cannot be read; the message names it and says why."""


@dataclass(frozen=True)
class SizeLimits:
    """The contract's `input.min_side` and `input.max_side`, in pixels of the oriented frame."""

    min_side: int = 16
    max_side: int = 4096

    def check(self, width: int, height: int, name: str) -> None:
        if min(width, height) < self.min_side or max(width, height) > self.max_side:
            raise InputError(
                f"{name} is {width}x{height} pixels: the bundle takes frames whose sides are between "
                f"{self.min_side} and {self.max_side} pixels; resize it before calling the filter"
            )


@dataclass
class Frame:
    """One decoded frame and where it came from (`name` is what a boxes sidecar line refers to)."""

    source: str  # the input file (an image or a video) as the caller named it
    name: str  # the sidecar key: the file name, or the path relative to the folder given on the command line
    index: int  # frame number within a video or a folder declared one stream; 0 for a lone image
    pixels: np.ndarray  # uint8 (H, W, 3) RGB, oriented
    video_time_s: float | None = None  # the container's timestamp, for video frames
    video_fps: float | None = None  # the container's frame rate, for video frames (0 when it states none)


@dataclass(frozen=True)
class Unreadable:
    """An input that gave no frame; reported in the records and counted as failed."""

    source: str
    reason: str
    skipped: bool = False  # a file of a format the contract does not list (it was not tried), not a failed read


def to_rgb(image: Image.Image) -> np.ndarray:
    """8-bit RGB, the one conversion ingest (datamodules/decoding.py) and the consumer share: 16-bit keeps its high
    byte (v >> 8) rather than Pillow's clip at 255, alpha (also a palette's transparency) is composited on
    black as round(colour x alpha / 255), and float images, which have no agreed 8-bit range, are refused.
    """
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "F":
        raise ValueError("its pixels are 32-bit floats (mode F), which have no agreed 8-bit range")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if "A" in image.getbands() or "a" in image.getbands():
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        return ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


class DecodeError(InputError):
    """An image that yields no pixels; `reason` is the kind (undecodable, truncated, unsupported_mode),
    the message the decoder's own words about the bytes (the caller names the file)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def decode_pixels(
    data: bytes, limits: SizeLimits | None = None, name: str = "the image"
) -> tuple[np.ndarray, list[str]]:
    """The first frame of an image file's bytes as upright, opaque 8-bit RGB (H, W, 3), and the normalisations
    applied (e.g. 'exif_orientation=6', 'mode=RGBA'). The one decoder for ingest and every consumer.

    `limits` is checked before the pixels are decoded, so a huge image is refused without allocating it.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.seek(0)  # a GIF's (or multi-page TIFF's) first frame
            if limits is not None:
                limits.check(*image.size, name)
            orientation = image.getexif().get(0x0112, 1)
            oriented = ImageOps.exif_transpose(image)
            oriented.load()
            notes = [] if orientation in (1, None) else [f"exif_orientation={orientation}"]
            if image.mode != "RGB":
                notes.append(f"mode={image.mode}")
            try:
                return np.ascontiguousarray(to_rgb(oriented)), notes
            except ValueError as error:
                raise DecodeError("unsupported_mode", f"mode {image.mode} cannot become 8-bit RGB: {error}") from error
    except InputError:
        raise
    except UnidentifiedImageError as error:
        raise DecodeError(
            "undecodable",
            f"Pillow recognises no image format in these {len(data)} bytes (they start with {data[:12]!r})",
        ) from error
    except (OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError) as error:
        text = f"{type(error).__name__}: {error}"
        cut = "truncated" in text.lower() or "broken data stream" in text.lower()
        raise DecodeError("truncated" if cut else "undecodable", f"the decoder stopped with {text}") from error


def decode_image(path: Path, limits: SizeLimits, name: str | None = None) -> np.ndarray:
    """uint8 (H, W, 3) RGB of an image file, or an InputError naming it with the decoder's reason."""
    name = name or str(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"{name} could not be read ({error.strerror or error})") from error
    try:
        return decode_pixels(data, limits, name)[0]
    except DecodeError as error:
        raise InputError(f"{name} could not be decoded: {error}") from error


def read_video(path: Path, limits: SizeLimits) -> Iterator[Frame | Unreadable]:
    """Every frame of a video file, with its container timestamp; a file that yields no frame is an InputError.

    A frame that cannot be decoded is reported (Unreadable, named by its number) and the stream goes on
    with the next one; only `MAX_BAD_FRAMES_IN_A_ROW` failures in a row end the file, as an InputError.
    """
    try:
        import cv2
    except ImportError as error:
        raise InputError(
            f"{path} is a video: reading video needs OpenCV, pip install 'childsafe-runtime[video]'"
        ) from error
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise InputError(f"{path} could not be opened as a video (OpenCV found no decodable stream)")
        announced = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        index, decoded, bad_in_a_row = 0, 0, 0
        while announced <= 0 or index < announced:
            ok, bgr = capture.read()
            if not ok:
                if announced <= 0 or bad_in_a_row + 1 >= MAX_BAD_FRAMES_IN_A_ROW:
                    break
                yield Unreadable(
                    f"{path} frame {index}", f"{path} frame {index} could not be decoded; the stream goes on"
                )
                index, bad_in_a_row = index + 1, bad_in_a_row + 1
                continue
            if decoded == 0:
                limits.check(bgr.shape[1], bgr.shape[0], str(path))
            time_s = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            yield Frame(str(path), path.name, index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), time_s, fps)
            index, decoded, bad_in_a_row = index + 1, decoded + 1, 0
        if decoded == 0:
            raise InputError(f"{path} opened as a video but not one frame could be decoded from it")
        if announced > index:
            raise InputError(
                f"{path} stopped after {index} of the {announced} frames its header announces "
                f"({MAX_BAD_FRAMES_IN_A_ROW} in a row failed): the rest is missing or corrupt"
            )
    finally:
        capture.release()


def folder_images(folder: Path) -> tuple[list[Path], list[Unreadable]]:
    """The folder's images in name order, and every other file in it reported (never skipped silently)."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if not entries:
        raise InputError(f"{folder} is an empty folder: there is no frame to judge")
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    others = [
        Unreadable(
            str(p),
            f"{p} is not one of the image formats the contract lists ({', '.join(IMAGE_SUFFIXES)})"
            if p.is_file()
            else f"{p} is a folder inside a folder of frames: pass it on its own",
            skipped=True,
        )
        for p in entries
        if p not in images
    ]
    return images, others


def read_inputs(inputs: list[Path], limits: SizeLimits) -> Iterator[Frame | Unreadable]:
    """Frames of images, folders of images and video files, in order; whatever cannot be read, as Unreadable.

    Frame names (the boxes sidecar key) are the file name of a lone image or video, and the path relative
    to the folder for a folder's images. Folder frames are numbered in name order.
    """
    for source in inputs:
        try:
            if source.is_dir():
                images, others = folder_images(source)
                yield from others
                for index, path in enumerate(images):
                    try:
                        pixels = decode_image(path, limits)
                    except InputError as error:
                        yield Unreadable(str(path), str(error))
                        continue
                    yield Frame(str(path), str(path.relative_to(source)), index, pixels)
            elif not source.exists():
                raise InputError(f"{source} does not exist")
            elif source.suffix.lower() in VIDEO_SUFFIXES:
                yield from read_video(source, limits)
            elif source.suffix.lower() in IMAGE_SUFFIXES:
                yield Frame(str(source), source.name, 0, decode_image(source, limits))
            else:
                reason = (
                    f"{source} has the suffix '{source.suffix}', which is neither an image format the contract "
                    f"lists ({', '.join(IMAGE_SUFFIXES)}) nor a video ({', '.join(VIDEO_SUFFIXES)})"
                )
                yield Unreadable(str(source), reason, skipped=True)
        except InputError as error:
            yield Unreadable(str(source), str(error))
