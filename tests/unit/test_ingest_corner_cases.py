"""Ingest's corner cases (issue 14, item 6), all driven by one messy dataset folder of generated images.

`messy_folder` builds the tree once per module: an age table with every awkward file a real
dataset ships (rotated by EXIF, transparent, CMYK, greyscale, palette, 16-bit, corrupt, duplicated,
labelled twice, labelled in words, named in another Unicode form or case, unlisted, with a bad
box), an APPA-REAL tree with a text age and unlisted originals, and content trees for the smoke
sample and for missing classes. Pixels are abstract shapes (tests/licensed_fixtures.py), never faces.
"""

from __future__ import annotations

import shutil
import unicodedata
from pathlib import Path

import cv2
import licensed_fixtures as fixtures
import numpy as np
import pandas as pd
import pytest
from childsafe_runtime.crop import CropConvention, crop_face
from PIL import Image
from test_licensed_data import module, quarantine

from core.errors import WorkbenchError
from datamodules.decoding import DecodeError, decode_image
from datamodules.ingest import subsample
from datamodules.licensed.appa_real import AppaReal
from datamodules.licensed.tables import AgeManifest, ContentManifest, ImageFolder
from datamodules.screening import pdq_hash, to_hex
from models.resize import resize_uint8

CONVENTION = CropConvention(margin=0.4, square=True)
NFC_NAME = unicodedata.normalize("NFC", "café.png")
NFD_NAME = unicodedata.normalize("NFD", "café.png")
UPRIGHT_BOX = (10.0, 30.0, 40.0, 70.0)  # in the upright 64 x 96 frame of rotated.png
SMOKE_FOLDERS = {"a_common": "safe", "b_rare": "suggestive", "c_rare": "explicit"}


def upright_image() -> Image.Image:
    """64 wide x 96 tall: tall enough that a missed rotation changes every pixel."""
    return fixtures.field_image(901, 96).crop((0, 0, 64, 96))


def alpha_image() -> tuple[Image.Image, np.ndarray]:
    """RGBA whose left half is transparent red; returns it and its expected composite on black."""
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:, :, 0] = 255  # red everywhere, hidden where alpha is 0
    rgba[:, 32:, :3] = (0, 90, 200)
    rgba[:, :, 3] = 0
    rgba[:, 32:, 3] = 255
    rgba[:, 30:34, 3] = 128  # a half-transparent seam
    colour, alpha = rgba[..., :3].astype(np.uint16), rgba[..., 3:].astype(np.uint16)
    expected = ((colour * alpha + 127) // 255).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA"), expected


def grey16() -> np.ndarray:
    return (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16 + 7).astype(np.uint16)


def age_tree(root: Path) -> Path:
    """An AgeManifest folder: 16 good files, every normalised mode, and every broken case (see the rows)."""
    rows: list[dict] = [{"path": f"good/{i:02d}.jpg", "age": 8 + 4 * i} for i in range(16)]
    for row in rows:
        fixtures.write_image(root / row["path"], seed=910 + int(Path(row["path"]).stem))
    for i in range(6):  # lower-quality copies: the same pictures to PDQ, in whatever split they land
        fixtures.write_image(root / f"near/{i:02d}.jpg", seed=910 + i, quality=40)
        rows.append({"path": f"near/{i:02d}.jpg", "age": 8 + 4 * i})

    upright = upright_image()
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 96 x 64 as stored; EXIF 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    (root / "modes").mkdir()
    stored.save(root / "modes/rotated.png", exif=exif)
    box = dict(zip(("box_x0", "box_y0", "box_x1", "box_y1"), UPRIGHT_BOX, strict=True))
    rows.append({"path": "modes/rotated.png", "age": 40, **box})
    alpha_image()[0].save(root / "modes/alpha.png")
    fixtures.field_image(902).convert("CMYK").save(root / "modes/cmyk.jpg", quality=95)
    fixtures.field_image(903).convert("L").save(root / "modes/grey.png")
    fixtures.field_image(904).convert("P").save(root / "modes/palette.png")
    Image.fromarray(grey16()).save(root / "modes/grey16.png")
    colour16 = (np.random.default_rng(905).integers(0, 65536, (64, 64, 3))).astype(np.uint16)
    cv2.imwrite(str(root / "modes/colour16.png"), colour16)
    for name in ("alpha.png", "cmyk.jpg", "grey.png", "palette.png", "grey16.png", "colour16.png"):
        rows.append({"path": f"modes/{name}", "age": 41})

    broken = root / "broken"
    broken.mkdir()
    shutil.copy(root / "good/00.jpg", broken / "same_a.jpg")
    shutil.copy(root / "good/00.jpg", broken / "same_b.jpg")
    rows += [{"path": "broken/same_a.jpg", "age": 30}, {"path": "broken/same_b.jpg", "age": 45}]  # and good/00 at 8
    shutil.copy(root / "good/01.jpg", broken / "copy.jpg")
    rows.append({"path": "broken/copy.jpg", "age": 12})  # good/01.jpg's bytes and age
    fixtures.write_image(broken / "words.jpg", seed=1100)
    rows.append({"path": "broken/words.jpg", "age": "fifty-five"})
    (broken / "garbage.jpg").write_bytes(b"\x00\x01 these bytes are no image at all" * 8)
    rows.append({"path": "broken/garbage.jpg", "age": 30})
    fixtures.write_image(broken / NFD_NAME, seed=1101)
    rows.append({"path": f"broken/{NFC_NAME}", "age": 30})
    fixtures.write_image(broken / "Upper.JPG", seed=1102)
    rows.append({"path": "broken/upper.jpg", "age": 30})
    fixtures.write_image(broken / "inverted_box.jpg", seed=1103)
    rows.append({"path": "broken/inverted_box.jpg", "age": 30, "box_x0": 50, "box_y0": 10, "box_x1": 20, "box_y1": 60})
    fixtures.write_image(broken / "text_box.jpg", seed=1105)
    rows.append({"path": "broken/text_box.jpg", "age": 30, "box_x0": "left", "box_y0": 1, "box_x1": 9, "box_y1": 9})
    fixtures.write_image(root / "stray/forgotten.jpg", seed=1104)  # on disk, in no row
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def appa_tree(root: Path) -> Path:
    """APPA-REAL with a real_age of "unknown" (train, row 3) and the originals beside the face crops, unlisted."""
    fixtures.appa_real(root)
    table = pd.read_csv(root / "gt_avg_train.csv").astype({"real_age": object})
    table.loc[2, "real_age"] = "unknown"
    table.to_csv(root / "gt_avg_train.csv", index=False)
    fixtures.write_image(root / "train/000000.jpg", seed=930)  # the original photo of a listed face crop
    return root


def content_trees(root: Path) -> Path:
    """`folders/`: 30 common and 3 + 3 rare images; `with_empty/`: one class folder empty; `one_missing/`: a table."""
    for f, (folder, count) in enumerate(zip(SMOKE_FOLDERS, (30, 3, 3), strict=True)):
        for i in range(count):
            fixtures.write_image(root / "folders" / folder / f"{i:03d}.jpg", seed=940 + 40 * f + i)
    shutil.copytree(root / "folders", root / "with_empty")
    shutil.rmtree(root / "with_empty/c_rare")
    (root / "with_empty/c_rare").mkdir()
    table = root / "one_missing"
    for i in range(8):
        fixtures.write_image(table / f"{i}.jpg", seed=990 + i)
    labels = ["safe", "explicit"] * 4
    pd.DataFrame({"path": [f"{i}.jpg" for i in range(8)], "label": labels}).to_csv(table / "manifest.csv", index=False)
    return root


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("messy")
    age_tree(root / "ages")
    appa_tree(root / "appa")
    content_trees(root / "content")
    return root


@pytest.fixture(scope="module")
def ages(messy_folder, tmp_path_factory):
    """The age table ingested once: its manifest, its report (by path) and its cached images."""
    dm = module(AgeManifest(), messy_folder / "ages", tmp_path_factory.mktemp("ages-cache"))
    cached = dm.load()
    return cached.manifest.set_index("path"), quarantine(dm).set_index("path"), np.asarray(cached.images)


def cached(ages, path: str) -> np.ndarray:
    manifest, _, images = ages
    return images[manifest.index.get_loc(path)]


def test_exif_orientation_is_applied_and_the_box_refers_to_the_upright_image(ages):
    manifest, _, _ = ages
    row = manifest.loc["modes/rotated.png"]
    assert (row["width"], row["height"]) == (64, 96)  # as displayed, not the 96 x 64 the file stores
    assert "exif_orientation=6" in row["normalised"]
    expected = resize_uint8(crop_face(np.array(upright_image()), UPRIGHT_BOX, CONVENTION), 64)
    assert np.array_equal(cached(ages, "modes/rotated.png"), expected)
    assert row["pdq"] == to_hex(pdq_hash(np.asarray(upright_image()))[0])  # hashed upright too


def test_cached_pixels_are_the_shared_crop_then_the_shared_resize_bit_for_bit(ages, messy_folder):
    """Without a box the whole image is resized; with one, crop_face cuts it first (the rotated case above)."""
    for path in ("good/03.jpg", "modes/grey.png", "modes/palette.png", "modes/cmyk.jpg"):
        rgb = np.array(Image.open(messy_folder / "ages" / path).convert("RGB"))
        assert np.array_equal(cached(ages, path), resize_uint8(rgb, 64)), path


def test_alpha_is_composited_on_black_so_hidden_colour_never_shows(ages):
    _, expected = alpha_image()
    pixels = cached(ages, "modes/alpha.png")
    assert np.array_equal(pixels, resize_uint8(expected, 64))
    assert pixels[:, :28, 0].max() == 0  # the red under alpha 0 is gone
    assert ages[0].loc["modes/alpha.png", "normalised"] == "mode=RGBA"


def test_cmyk_greyscale_palette_and_16_bit_become_8_bit_rgb(ages):
    manifest, _, _ = ages
    notes = manifest.loc[[f"modes/{n}" for n in ("cmyk.jpg", "grey.png", "palette.png", "grey16.png")], "normalised"]
    assert notes.tolist() == ["mode=CMYK", "mode=L", "mode=P", "mode=I;16"]
    grey = cached(ages, "modes/grey.png")
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    high_byte = np.repeat((grey16() >> 8).astype(np.uint8)[..., None], 3, axis=2)
    assert np.array_equal(cached(ages, "modes/grey16.png"), resize_uint8(high_byte, 64))  # not clipped at 255
    assert cached(ages, "modes/grey16.png").min() < 200  # Pillow's own convert would make it all white
    assert "modes/colour16.png" in manifest.index


def test_the_same_image_under_two_labels_is_a_conflict_naming_every_file_and_label(ages):
    _, report, _ = ages
    conflict = report[report["reason"] == "label_conflict"]
    assert sorted(conflict.index) == ["broken/same_a.jpg", "broken/same_b.jpg", "good/00.jpg"]
    for detail in conflict["detail"]:
        for text in ("'broken/same_a.jpg' as age=30", "'broken/same_b.jpg' as age=45", "'good/00.jpg' as age=8"):
            assert text in detail


def test_a_duplicate_names_the_copy_that_is_kept(ages):
    manifest, report, _ = ages
    assert report.loc["good/01.jpg", "reason"] == "duplicate_sha256"  # path order: broken/copy.jpg comes first
    assert "as 'broken/copy.jpg', the copy that is kept" in report.loc["good/01.jpg", "detail"]
    assert "broken/copy.jpg" in manifest.index


def test_a_label_in_words_is_quarantined_with_the_text_as_written(ages):
    _, report, _ = ages
    row = report.loc["broken/words.jpg"]
    assert row["reason"] == "label_unparsable" and row["label_raw"] == "fifty-five"
    assert row["detail"] == f"age 'fifty-five' ({row['source']}) is not a number"
    assert row["source"].startswith("manifest.csv row ")


def test_an_undecodable_file_names_itself_and_the_decoders_reason(ages):
    _, report, _ = ages
    detail = report.loc["broken/garbage.jpg", "detail"]
    assert report.loc["broken/garbage.jpg", "reason"] == "undecodable"
    assert detail.startswith("'broken/garbage.jpg': Pillow recognises no image format in these 272 bytes")
    assert "BytesIO" not in " ".join(report["detail"].dropna())


def test_near_duplicates_across_splits_name_the_earlier_file_and_the_distance(ages):
    manifest, report, _ = ages
    leaks = report[report["reason"] == "near_duplicate_across_splits"]
    assert len(leaks)  # six pairs over four splits: the fixture's splits put some pairs apart
    for path, detail in leaks["detail"].items():
        partner = f"near/{Path(path).name}" if path.startswith("good/") else f"good/{Path(path).name}"
        assert f"of '{partner}' ({manifest.loc[partner, 'split']})" in detail
        assert 0 <= int(detail.split("PDQ within ")[1].split(" bits")[0]) <= 31


def test_file_name_mismatches_in_unicode_form_or_case_are_named(ages):
    _, report, _ = ages
    nfc = report.loc[f"broken/{NFC_NAME}"]
    assert nfc["reason"] == "filename_mismatch"
    assert "(NFC, 'broken/caf\\xe9.png')" in nfc["detail"]
    assert "(NFD, 'broken/cafe\\u0301.png')" in nfc["detail"]
    assert "differ only in Unicode normalisation" in nfc["detail"]
    case = report.loc["broken/upper.jpg"]
    assert case["reason"] == "filename_mismatch" and "'broken/Upper.JPG'" in case["detail"]
    assert "differ only in letter case" in case["detail"]
    assert report.loc[f"broken/{NFD_NAME}", "reason"] == "unlisted_file"  # the file itself is still screened


def test_files_no_table_lists_are_screened_and_reported_but_not_counted(ages, messy_folder, tmp_path):
    _, report, _ = ages
    stray = report.loc["stray/forgotten.jpg"]
    assert (stray["reason"], stray["kind"]) == ("unlisted_file", "unlisted")
    assert len(stray["sha256"]) == 64 and len(stray["pdq"]) == 64  # decoded and hashed like any listed file
    assert "manifest.csv" not in report.index  # the adapter's own table is not an unlisted file
    # Screened means a hash-list match in an unlisted file still refuses the run.
    listed = tmp_path / "list.txt"
    listed.write_text(to_hex(pdq_hash(np.asarray(fixtures.field_image(1104)))[0]) + "\n")
    with pytest.raises(WorkbenchError, match=r"^1 image\(s\) match the configured hash lists"):
        module(AgeManifest(), messy_folder / "ages", tmp_path, hash_lists=[str(listed)]).load()


def test_a_bad_box_is_quarantined_with_the_rule_it_breaks(ages):
    _, report, _ = ages
    row = report.loc["broken/inverted_box.jpg"]
    assert row["reason"] == "bad_box" and "is inverted or empty" in row["detail"]
    row = report.loc["broken/text_box.jpg"]  # a word in a box cell: not "no box", and not a crash
    assert row["reason"] == "bad_box" and "has a non-finite coordinate" in row["detail"]


def test_appa_real_text_age_names_the_file_and_row_and_its_originals_are_screened(messy_folder, tmp_path):
    dm = module(AppaReal(), messy_folder / "appa", tmp_path)
    report = quarantine(dm).set_index("path")
    row = report.loc["train/000002.jpg_face.jpg"]
    assert (row["reason"], row["label_raw"], row["source"]) == ("label_unparsable", "unknown", "gt_avg_train.csv row 3")
    assert row["detail"] == "age 'unknown' (gt_avg_train.csv row 3) is not a number"
    original = report.loc["train/000000.jpg"]
    assert (original["reason"], original["kind"]) == ("unlisted_file", "unlisted") and len(original["pdq"]) == 64
    assert not report.index.str.startswith("gt_avg_").any()
    assert dm.quarantine_summary()["unlisted"] == 1


def test_debug_smoke_sample_keeps_every_class_and_the_proportions(messy_folder, tmp_path):
    dm = module(
        ImageFolder(folder_classes=SMOKE_FOLDERS),
        messy_folder / "content" / "folders",
        tmp_path,
        max_images=12,
        split_fractions={"train": 0.5, "val": 0.0, "calib": 0.0, "test": 0.5},
    )
    counts = dm.load().manifest["label_name"].value_counts().to_dict()
    assert counts == {"safe": 10, "suggestive": 1, "explicit": 1}  # the first 12 files would all be safe


def test_smoke_sample_of_ages_covers_every_age_band():
    rows = pd.DataFrame({"path": [f"{i:03d}" for i in range(200)], "age": [30.0] * 190 + [5.0] * 5 + [70.0] * 5})
    sample = subsample(rows, 20, "age", seed=0)
    assert len(sample) == 20 and {5.0, 30.0, 70.0} <= set(sample["age"])
    assert sample["path"].is_monotonic_increasing  # path order kept: duplicates still resolve the same way


def test_an_empty_class_folder_is_a_named_error(messy_folder, tmp_path):
    root = messy_folder / "content" / "with_empty"
    with pytest.raises(WorkbenchError, match=r"Folder .*with_empty/c_rare \(class 'explicit' .*holds no files"):
        module(ImageFolder(folder_classes=SMOKE_FOLDERS), root, tmp_path).load()


def test_a_class_with_no_usable_image_is_a_named_error(messy_folder, tmp_path):
    with pytest.raises(WorkbenchError, match=r"No usable image of class 'suggestive' is left after ingest"):
        module(ContentManifest(), messy_folder / "content" / "one_missing", tmp_path).load()


def test_a_decompression_bomb_is_an_undecodable_file_not_a_crash(monkeypatch, messy_folder):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # so a 96 x 96 file is "too many pixels" to Pillow
    with pytest.raises(DecodeError, match=r"DecompressionBombError: Image size \(9216 pixels\)") as caught:
        decode_image((messy_folder / "ages" / "good/00.jpg").read_bytes())
    assert caught.value.reason == "undecodable"
