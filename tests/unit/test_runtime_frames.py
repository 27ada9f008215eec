"""Frame decoding as the contract's `input.decoding` states it, and every unreadable input reported by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from childsafe_runtime.frames import IMAGE_SUFFIXES, InputError, SizeLimits, Unreadable, decode_image, read_inputs
from PIL import Image

LIMITS = SizeLimits(16, 4096)


def _picture(height: int = 24, width: int = 40) -> np.ndarray:
    """Four flat quadrants: survives palette formats exactly and shows any rotation or flip."""
    out = np.zeros((height, width, 3), np.uint8)
    out[: height // 2, : width // 2] = (200, 30, 30)
    out[: height // 2, width // 2 :] = (30, 200, 30)
    out[height // 2 :, : width // 2] = (30, 30, 200)
    out[height // 2 :, width // 2 :] = (220, 220, 40)
    return out


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES)
def test_every_listed_format_decodes_to_the_same_rgb(tmp_path, suffix):
    picture = _picture()
    path = tmp_path / f"frame{suffix}"
    lossy = suffix in (".jpg", ".jpeg")
    options = {"quality": 98, "subsampling": 0} if lossy else {"lossless": True} if suffix == ".webp" else {}
    Image.fromarray(picture).save(path, **options)
    decoded = decode_image(path, LIMITS)
    assert decoded.dtype == np.uint8 and decoded.shape == picture.shape
    error = np.abs(decoded.astype(int) - picture)
    assert error.mean() <= 2 if lossy else error.max() == 0  # JPEG rings a little at the quadrant edges


def test_exif_orientation_is_applied_before_anything_else(tmp_path):
    picture = _picture()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path = tmp_path / "phone.png"
    Image.fromarray(picture).save(path, exif=exif)
    decoded = decode_image(path, LIMITS)
    assert decoded.shape == (40, 24, 3)
    assert np.array_equal(decoded, np.rot90(picture, k=-1))


def test_alpha_is_composited_on_black(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :10, 3] = 255
    rgba[:, 10:, 3] = 0
    rgba[:5, :, 3] = 128
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    decoded = decode_image(path, LIMITS)
    assert (decoded[5:, :10] == 200).all() and (decoded[5:, 10:] == 0).all()
    assert (decoded[:5] == 100).all()  # round(200 x 128 / 255) over black


def test_palette_transparency_is_composited_on_black(tmp_path):
    image = Image.fromarray(_picture()).quantize(4)
    path = tmp_path / "palette.gif"
    transparent = image.getpixel((0, 0))
    image.save(path, transparency=transparent)
    decoded = decode_image(path, LIMITS)
    assert (decoded[0, 0] == 0).all() and (decoded[-1, -1] != 0).any()


def test_greyscale_cmyk_and_16_bit_become_8_bit_rgb(tmp_path):
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (20, 1))
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    assert np.array_equal(decode_image(tmp_path / "grey.png", LIMITS), np.repeat(grey[..., None], 3, axis=2))

    Image.fromarray(_picture()).convert("CMYK").save(tmp_path / "print.tiff")
    cmyk = decode_image(tmp_path / "print.tiff", LIMITS)
    assert cmyk.shape == (24, 40, 3) and np.abs(cmyk.astype(int) - _picture()).max() <= 2

    deep = np.full((20, 20), 65535, np.uint16)
    deep[:, 10:] = 32768 + 255  # the high byte is 128
    Image.fromarray(deep).save(tmp_path / "deep.png")
    decoded = decode_image(tmp_path / "deep.png", LIMITS)
    assert (decoded[:, :10] == 255).all() and (decoded[:, 10:] == 128).all()  # scaled (high byte), not clipped at 255


def test_a_gif_gives_its_first_frame(tmp_path):
    first, second = (Image.fromarray(np.full((20, 20, 3), v, np.uint8)) for v in (40, 220))
    path = tmp_path / "moving.gif"
    first.save(path, save_all=True, append_images=[second])
    assert (decode_image(path, LIMITS) == 40).all()


@pytest.mark.parametrize(("size", "limits"), [((10, 100), LIMITS), ((100, 20), SizeLimits(16, 64))])
def test_a_frame_outside_the_size_limits_is_refused_by_name(tmp_path, size, limits):
    path = tmp_path / "odd.png"
    Image.new("RGB", size).save(path)
    with pytest.raises(InputError, match=rf"odd\.png is {size[0]}x{size[1]} pixels.*between {limits.min_side} and"):
        decode_image(path, limits)


def test_a_folder_with_one_truncated_image_reports_it_and_reads_the_rest(tmp_path):
    for name in ("a.png", "c.png"):
        Image.fromarray(_picture()).save(tmp_path / name)
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.txt").write_text("not a frame")
    events = list(read_inputs([tmp_path], LIMITS))
    frames = [e for e in events if not isinstance(e, Unreadable)]
    problems = {Path(e.source).name: e for e in events if isinstance(e, Unreadable)}
    assert [(f.name, f.index) for f in frames] == [("a.png", 0), ("c.png", 2)]
    assert set(problems) == {"b.png", "notes.txt"}
    assert "b.png could not be decoded" in problems["b.png"].reason and not problems["b.png"].skipped
    assert "not one of the image formats" in problems["notes.txt"].reason and problems["notes.txt"].skipped


def test_an_empty_folder_a_missing_file_and_an_unknown_suffix_are_reported(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "clip.xyz").write_bytes(b"?")
    events = list(read_inputs([empty, tmp_path / "gone.png", tmp_path / "clip.xyz"], LIMITS))
    assert all(isinstance(e, Unreadable) for e in events)
    assert "empty folder" in events[0].reason and str(empty) in events[0].reason
    assert "gone.png does not exist" in events[1].reason
    assert "suffix '.xyz'" in events[2].reason and events[2].skipped


def test_a_file_that_is_not_an_image_is_named_with_the_decoder_s_reason(tmp_path):
    path = tmp_path / "fake.jpg"
    path.write_bytes(b"this is text, not a JPEG")
    with pytest.raises(InputError, match=r"fake\.jpg could not be decoded: Pillow recognises no image format"):
        decode_image(path, LIMITS)


def test_video_frames_carry_the_container_timestamps_and_a_broken_video_is_named(tmp_path):
    cv2 = pytest.importorskip("cv2")
    video = tmp_path / "call.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (40, 24))
    for value in (30, 90, 150, 210):
        writer.write(np.full((24, 40, 3), value, np.uint8))
    writer.release()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    events = list(read_inputs([video, broken], LIMITS))
    assert [(e.name, e.index, round(e.video_time_s, 3)) for e in events[:4]] == [
        ("call.avi", i, i / 10) for i in range(4)
    ]
    assert np.allclose([e.pixels.mean() for e in events[:4]], [30, 90, 150, 210], atol=3)  # MJPG is lossy
    assert isinstance(events[4], Unreadable) and "broken.mp4 could not be opened as a video" in events[4].reason
