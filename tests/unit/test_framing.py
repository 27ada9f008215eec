"""A cache with a border: ingest, evaluation and the export graph cut and frame every face the same way."""

from __future__ import annotations

import licensed_fixtures as fixtures
import numpy as np
import pytest
import torch
from childsafe_runtime.crop import CropConvention, crop_face
from PIL import Image

from core.errors import WorkbenchError
from datamodules.licensed.datamodule import LicensedDataModule
from datamodules.licensed.tables import AgeManifest
from export.pipeline import face_crop_of
from models.age_module import AgeModule
from models.resize import Framing, resize_uint8

CROP = {"margin": 0.25, "square": False, "min_face_side": 20}  # none of them the defaults


@pytest.fixture(scope="module")
def boxed(tmp_path_factory):
    root = fixtures.age_manifest_with_boxes(tmp_path_factory.mktemp("boxed") / "frames", n=40)
    datamodule = LicensedDataModule(
        adapter=AgeManifest(),
        root=str(root),
        name="boxed",
        card=str(root / "dataset_card.yaml"),
        intended_use="research",
        cache_dir=str(root.parent / "cache"),
        target="age",
        preview_columns=("split",),
        image_size=72,
        input_size=64,
        crop=CROP,
        max_bad_fraction=0.0,
        near_duplicate_distance=0,
        render_workers=1,
    )
    datamodule.load()
    return root, datamodule


def test_the_data_record_states_the_crop_it_was_cut_with(boxed):
    _, datamodule = boxed
    crop = datamodule.data_record()["crop"]
    assert {k: crop[k] for k in CROP} == CROP
    assert (crop["size"], crop["input_size"], crop["centre_offset"]) == (72, 64, 4)
    assert face_crop_of(datamodule.data_record(), Framing(72, 64)) == CropConvention(**CROP)  # the contract's
    with pytest.raises(WorkbenchError, match=r"cached at 72 px with a 64 px network input.*frames 64 px around 64"):
        face_crop_of(datamodule.data_record(), Framing(64, 64))
    with pytest.raises(WorkbenchError, match=r"states no face crop.*data.crop"):
        face_crop_of({"name": "old run"}, Framing(72, 64))


def test_evaluation_pixels_and_the_graphs_framing_equal_a_runtime_crop_of_the_frame(boxed):
    root, datamodule = boxed
    rows = datamodule.split_manifest("test")
    served = datamodule.dataset("test").__getitems__(list(range(len(rows))))["image"]  # what evaluation sees
    module = AgeModule({"name": "small_cnn"}, {"kind": "dldl"}, {"lr": 1e-3, "weight_decay": 0.0}, 64, cache_size=72)
    assert module.framing == datamodule.framing == Framing(72, 64)
    convention = CropConvention(**CROP)
    assert len(rows) >= 3
    for i, (_, row) in enumerate(rows.iterrows()):
        frame = np.asarray(Image.open(root / row["path"]).convert("RGB"))
        box = [row["box_x0"], row["box_y0"], row["box_x1"], row["box_y1"]]
        face = crop_face(frame, box, convention)  # what a runtime hands the graph
        cached = resize_uint8(face, 72)
        assert np.array_equal(served[i].permute(1, 2, 0).numpy(), cached[4:68, 4:68])
        graph = module.framing(torch.from_numpy(face).permute(2, 0, 1)[None])[0]  # the export wrapper's first step
        assert torch.equal(graph.to(torch.uint8), served[i])


def test_a_network_input_larger_than_the_cache_is_refused():
    with pytest.raises(ValueError, match=r"network input \(80 px\) must fit in the cached image \(72 px\)"):
        Framing(72, 80)
