"""Licensed-data adapters, integrity quarantine, PDQ screening and licence enforcement, on generated fixture trees."""

from __future__ import annotations

import io
from pathlib import Path

import licensed_fixtures as fixtures
import numpy as np
import pandas as pd
import pytest
from childsafe_runtime.crop import CropConvention, crop_face
from PIL import Image

from core.errors import WorkbenchError
from datamodules.cards import load_card
from datamodules.licensed.appa_real import AppaReal
from datamodules.licensed.datamodule import LicensedDataModule
from datamodules.licensed.filenames import AgeDB, FGNet, UTKFace
from datamodules.licensed.imdb_wiki import ImdbWiki
from datamodules.licensed.tables import AgeManifest, ContentManifest, ImageFolder
from datamodules.screening import HashList, pdq_hash, to_hex
from datamodules.splits import assign_splits
from models.resize import resize_uint8

SCRAPE_CLASSES = {"drawings": "safe", "neutral": "safe", "sexy": "suggestive", "hentai": "explicit", "porn": "explicit"}


def module(adapter, root: Path, tmp_path: Path, **settings) -> LicensedDataModule:
    """A DataModule over `root` with a fixture card permitting research (unless `card` is given)."""
    settings.setdefault("card", str(fixtures.write_card(tmp_path / "card.yaml", ["research"])))
    settings.setdefault("max_bad_fraction", 1.0)
    settings.setdefault("intended_use", "research")
    settings.setdefault("render_workers", 1)
    return LicensedDataModule(
        adapter=adapter,
        root=str(root),
        name=root.name,
        cache_dir=str(tmp_path / "cache"),
        target="age" if adapter.task == "age" else "label",
        preview_columns=("split",),
        classes=["safe", "suggestive", "explicit"],
        **settings,
    )


def quarantine(datamodule: LicensedDataModule) -> pd.DataFrame:
    return pd.read_csv(datamodule.load().directory / "quarantine.csv")


def reasons(datamodule: LicensedDataModule) -> dict[str, int]:
    return quarantine(datamodule)["reason"].value_counts().to_dict()


def test_utkface_labels_from_names_and_unparsable_names_quarantined(tmp_path):
    dm = module(UTKFace(), fixtures.utkface(tmp_path / "utk", n=24), tmp_path)
    manifest = dm.load().manifest
    assert len(manifest) == 24
    assert reasons(dm) == {"unparsable_filename": 2}
    row = manifest.set_index("path").loc["38_1_1_20170116000000001.jpg.chip.jpg"]
    assert (row["age"], row["sex"], row["race"], row["licence"]) == (38.0, "female", "black", "CC0-1.0")
    assert set(manifest["split"]) == {"train", "val", "calib", "test"}
    assert manifest["sha256"].str.len().eq(64).all() and manifest["pdq"].str.len().eq(64).all()
    assert dm.load().images.shape == (24, 64, 64, 3)


def test_fgnet_subjects_ages_and_leave_one_subject_out(tmp_path):
    dm = module(
        FGNet(),
        fixtures.fgnet(tmp_path / "fgnet"),
        tmp_path,
        holdout_subject="fgnet-002",
        split_fractions={"train": 0.5, "val": 0.25, "calib": 0.25, "test": 0.0},
    )
    manifest = dm.load().manifest
    assert reasons(dm) == {"unparsable_filename": 1}
    assert manifest.groupby("subject_id")["age"].apply(sorted).to_dict() == {
        f"fgnet-00{s}": [2.0, 9.0, 17.0, 30.0] for s in range(1, 6)
    }
    assert set(manifest.loc[manifest["split"] == "test", "subject_id"]) == {"fgnet-002"}
    assert manifest.groupby("subject_id")["split"].nunique().max() == 1


def test_agedb_subject_is_the_name(tmp_path):
    dm = module(
        AgeDB(),
        fixtures.agedb(tmp_path / "agedb"),
        tmp_path,
        split_fractions={"train": 0.5, "test": 0.5, "val": 0.0, "calib": 0.0},
    )
    manifest = dm.load().manifest.set_index("path")
    assert reasons(dm) == {"unparsable_filename": 1}
    assert manifest.loc["2_JohnDoe_12_m.jpg", ["age", "subject_id", "sex"]].tolist() == [12.0, "agedb-JohnDoe", "male"]
    assert manifest.groupby("subject_id")["split"].nunique().max() == 1


@pytest.mark.parametrize(
    ("age_label", "expected", "bad"),
    [("real", 21.0, {"missing_file": 1, "label_missing": 1}), ("apparent", 21.5, {"missing_file": 1})],
)
def test_appa_real_keeps_its_splits_and_label_choice(tmp_path, age_label, expected, bad):
    dm = module(AppaReal(age_label=age_label), fixtures.appa_real(tmp_path / "appa"), tmp_path)
    manifest = dm.load().manifest.set_index("path")
    assert reasons(dm) == bad
    assert manifest.loc["train/000001.jpg_face.jpg", "age"] == expected
    assert (manifest.filter(like="test/", axis=0)["split"] == "test").all()
    assert (manifest.filter(like="train/", axis=0)["split"] == "train").all()
    assert set(manifest.filter(like="valid/", axis=0)["split"]) == {"val", "calib"}


def test_imdb_wiki_age_from_matlab_dates_face_filters_and_box_crop(tmp_path):
    dm = module(
        ImdbWiki(source="wiki"),
        fixtures.imdb_wiki(tmp_path / "wiki"),
        tmp_path,
        split_fractions={"train": 0.4, "val": 0.3, "calib": 0.0, "test": 0.3},
        max_bad_fraction=0.0,
    )
    manifest = dm.load().manifest.set_index("path")
    report = quarantine(dm)
    assert manifest["age"].to_dict() == {"00/0_photo.jpg": 30.0, "01/1_photo.jpg": 29.0, "02/2_photo.jpg": 11.0}
    assert report.set_index("reason")["kind"].to_dict() == {
        "no_face": "filtered",
        "low_face_score": "filtered",
        "second_face": "filtered",
    }
    assert dm.quarantine_summary()["quarantined"] == 0  # policy filters do not count against max_bad_fraction
    # The cached pixels are the shared crop (the box 30..90 grown 40% each side: 6..114) then the shared resize,
    # bit for bit, of the decoded JPEG.
    decoded = np.asarray(Image.open(tmp_path / "wiki" / "00/0_photo.jpg").convert("RGB"))
    crop = crop_face(decoded, (30.0, 30.0, 90.0, 90.0), CropConvention(margin=0.4, square=True))
    assert crop.shape == (108, 108, 3) and np.array_equal(crop, decoded[6:114, 6:114])
    assert np.array_equal(dm.load().images[manifest.index.get_loc("00/0_photo.jpg")], resize_uint8(crop, 64))


def test_content_image_folder_maps_folders_to_classes(tmp_path):
    dm = module(ImageFolder(folder_classes=SCRAPE_CLASSES), fixtures.content_folders(tmp_path / "scrape"), tmp_path)
    manifest = dm.load().manifest
    assert manifest.groupby("label_name").size().to_dict() == {"safe": 8, "suggestive": 4, "explicit": 8}
    assert (manifest["label"] == manifest["label_name"].map({"safe": 0, "suggestive": 1, "explicit": 2})).all()
    with pytest.raises(WorkbenchError, match=r"porn.*folder_classes"):
        module(ImageFolder(folder_classes={"drawings": "safe"}), tmp_path / "scrape", tmp_path).load()


def test_content_manifest_labels_checked(tmp_path):
    root = tmp_path / "content"
    for i in range(6):
        fixtures.write_image(root / f"{i}.png", seed=600 + i)
    labels = ["safe", "explicit", "suggestive", "safe", "unknown-class", ""]
    pd.DataFrame({"path": [f"{i}.png" for i in range(6)], "label": labels}).to_csv(root / "manifest.csv", index=False)
    dm = module(ContentManifest(), root, tmp_path, split_fractions={"train": 0.5, "test": 0.5, "val": 0, "calib": 0})
    assert reasons(dm) == {"label_out_of_range": 1, "label_missing": 1}
    assert len(dm.load().manifest) == 4


def age_manifest_tree(root: Path, extra: list[tuple[str, float]], writes: dict[str, bytes] | None = None) -> Path:
    """8 good rows plus `extra` (path, age) rows; `writes` puts raw bytes at paths (corrupt files)."""
    rows = [(f"img/{i}.jpg", 10.0 + 7 * i) for i in range(8)]
    for path, _ in rows:
        fixtures.write_image(root / path, seed=700 + int(Path(path).stem))
    for path, data in (writes or {}).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    pd.DataFrame(rows + extra, columns=["path", "age"]).to_csv(root / "manifest.csv", index=False)
    return root


def jpeg_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    fixtures.field_image(seed).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("extra", "writes", "reason"),
    [
        ([("bad/corrupt.jpg", 30.0)], {"bad/corrupt.jpg": b"\xff\xd8 not really a jpeg" * 20}, "undecodable"),
        ([("bad/cut.jpg", 30.0)], {"bad/cut.jpg": jpeg_bytes(90)[:1500]}, "truncated"),
        ([("img/0.jpg", 150.0)], {}, "label_out_of_range"),
        ([("../outside.jpg", 30.0)], {"../outside.jpg": jpeg_bytes(91)}, "path_escapes_root"),
        ([("tiny.png", 30.0)], {}, "too_small"),
        ([("copy.jpg", 31.0)], {}, "duplicate_sha256"),  # img/3.jpg's bytes and age
    ],
    ids=["corrupted", "truncated", "age-out-of-range", "escaping-path", "too-small", "duplicate"],
)
def test_each_integrity_failure_is_quarantined_with_its_reason(tmp_path, extra, writes, reason):
    root = age_manifest_tree(tmp_path / "data", extra, writes)
    fixtures.write_image(root / "tiny.png", seed=92, size=16)
    (root / "copy.jpg").write_bytes((root / "img/3.jpg").read_bytes())
    dm = module(AgeManifest(), root, tmp_path)
    report = quarantine(dm).query("kind != 'unlisted'")  # tiny.png and copy.jpg are unlisted unless a row names them
    assert report["reason"].tolist() == [reason]
    assert report["path"].tolist() == [extra[0][0] if reason != "duplicate_sha256" else "img/3.jpg"]
    assert len(dm.load().manifest) == 8


def test_near_duplicate_across_splits_is_leakage(tmp_path):
    root = age_manifest_tree(tmp_path / "data", [(f"near/{i}.jpg", 12.0 + i) for i in range(8)])
    for i in range(8):  # a lower-quality copy of each image: the same picture to PDQ
        fixtures.write_image(root / f"near/{i}.jpg", seed=700 + i, quality=40)
    dm = module(AgeManifest(), root, tmp_path)
    manifest, report = dm.load().manifest, quarantine(dm)
    assert set(report["reason"]) == {"near_duplicate_across_splits"}
    stems = pd.concat([manifest["path"], report["path"]]).map(lambda p: Path(p).stem)
    assert stems.value_counts().eq(2).all()  # every pair is accounted for: one kept, or one quarantined
    kept_pairs = manifest.assign(stem=manifest["path"].map(lambda p: Path(p).stem)).groupby("stem")["split"].nunique()
    assert kept_pairs.max() == 1


def test_run_fails_when_too_many_files_are_bad(tmp_path):
    root = age_manifest_tree(tmp_path / "data", [("img/1.jpg", -3.0)])
    with pytest.raises(WorkbenchError, match=r"1 of 9 files .* data\.max_bad_fraction=0\.01.*quarantine\.csv"):
        module(AgeManifest(), root, tmp_path, max_bad_fraction=0.01).load()
    assert (tmp_path / "cache" / "refused").is_dir()


def test_hash_list_catches_listed_images_and_their_variants_only(tmp_path):
    root = tmp_path / "data"
    for i in range(10):
        fixtures.write_image(root / f"img/{i}.jpg", seed=800 + i)
    listed = [0, 1, 2]
    fixtures.write_image(root / "variants/0_requality.jpg", seed=800, quality=35)
    fixtures.field_image(801).resize((64, 64), Image.BILINEAR).save(root / "variants/1_small.png")
    fixtures.field_image(802).resize((200, 200), Image.BICUBIC).save(root / "variants/2_large.jpg", quality=70)
    hash_file = tmp_path / "lists" / "known.txt"
    hash_file.parent.mkdir()
    hashes = [to_hex(pdq_hash(np.asarray(Image.open(root / f"img/{i}.jpg").convert("RGB")))[0]) for i in listed]
    hash_file.write_text("# a list this team is entitled to use\n" + "\n".join(hashes) + "\n")
    pd.DataFrame({"path": sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*")), "age": 30.0}).to_csv(
        root / "manifest.csv", index=False
    )
    with pytest.raises(WorkbenchError, match=r"^6 image\(s\) match the configured hash lists"):
        module(AgeManifest(), root, tmp_path, hash_lists=[str(hash_file)]).load()
    (report,) = (tmp_path / "cache" / "refused").glob("*/quarantine.csv")
    caught = pd.read_csv(report)
    assert sorted(caught["path"]) == [
        "img/0.jpg",
        "img/1.jpg",
        "img/2.jpg",
        "variants/0_requality.jpg",
        "variants/1_small.png",
        "variants/2_large.jpg",
    ]
    assert set(caught["reason"]) == {"hash_list_match"} and caught["pdq"].str.len().eq(64).all()
    assert caught["detail"].str.contains("known.txt:").all()
    assert not list((tmp_path / "cache").glob("data-*/images.npy"))  # nothing was cached


def test_malformed_hash_list_names_file_and_line(tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_text("0" * 64 + "\nnot-a-hash\n")
    with pytest.raises(WorkbenchError, match=r"list\.txt, line 2: 'not-a-hash'"):
        HashList.load([bad])


def test_licence_refuses_commercial_use_of_research_only_data_and_allows_research(tmp_path):
    root = fixtures.utkface(tmp_path / "utk", n=8)
    research_only = str(fixtures.write_card(tmp_path / "research.yaml", ["research"], name="utk"))
    with pytest.raises(WorkbenchError, match=r"permits research; this run's intended_use is 'commercial'"):
        module(UTKFace(), root, tmp_path, card=research_only, intended_use="commercial").load()
    assert not (tmp_path / "cache").exists()  # refused before any image was read
    assert len(module(UTKFace(), root, tmp_path, card=research_only, intended_use="research").load().manifest) == 8


def test_missing_card_stops_the_run(tmp_path):
    with pytest.raises(WorkbenchError, match=r"No dataset card at data\.card=.*nowhere\.yaml"):
        module(UTKFace(), fixtures.utkface(tmp_path / "utk", n=4), tmp_path, card=str(tmp_path / "nowhere.yaml")).load()


def test_splits_are_persisted_and_reused_when_data_grows(tmp_path):
    root = fixtures.utkface(tmp_path / "utk", n=30)
    first = module(UTKFace(), root, tmp_path).load().manifest.set_index("id")["split"]
    for i in range(30, 36):
        fixtures.write_image(root / f"{20 + i}_0_0_20170116{i:09d}.jpg.chip.jpg", seed=i)
    second = module(UTKFace(), root, tmp_path).load().manifest.set_index("id")["split"]
    assert len(second) == 36
    assert second.loc[first.index].equals(first)


def test_splits_are_stratified_by_age_band():
    manifest = pd.DataFrame(
        {
            "id": [str(i) for i in range(400)],
            "subject_id": [str(i // 2) for i in range(400)],
            "age": np.repeat(np.arange(200) % 80, 2).astype(float),
            "split": None,
        }
    )
    split = assign_splits(manifest, "age", {"train": 0.7, "val": 0.1, "calib": 0.1, "test": 0.1}, seed=0)
    minors = manifest["age"] < 18
    assert split.groupby(manifest["subject_id"]).nunique().max() == 1
    assert split[minors].value_counts(normalize=True)["test"] == pytest.approx(0.1, abs=0.03)


def test_an_empty_dataset_folder_is_refused_by_name(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkbenchError, match=r"No images found under data\.root=.*empty"):
        module(UTKFace(), tmp_path / "empty", tmp_path).load()


def test_a_card_field_of_the_wrong_kind_names_the_card_and_the_field(tmp_path):
    card = fixtures.write_card(tmp_path / "card.yaml", ["research"])
    card.write_text(card.read_text().replace("contains_minors: false", "contains_minors: sometimes"))
    with pytest.raises(WorkbenchError, match=r"card\.yaml, field contains_minors: 'sometimes' is not of type"):
        load_card(card)
    card = fixtures.write_card(tmp_path / "card.yaml", ["resale"])
    with pytest.raises(WorkbenchError, match=r"field permitted_uses\.0: 'resale' is not one of"):
        load_card(card)


def test_the_preview_captions_the_columns_a_dataset_has(tmp_path):
    """An age manifest without the optional `sex` column still gets its preview (it used to raise KeyError)."""
    from datamodules.preview import TILE, save_preview

    manifest = pd.DataFrame({"age": [7.0, 30.0], "split": ["train", "train"]})
    images = np.zeros((2, 8, 8, 3), np.uint8)
    path = save_preview(images, manifest, ("age", "sex", "split", "subject_id"), tmp_path / "preview.png")
    assert Image.open(path).size == (8 * TILE, TILE + 28)
