"""Training on licensed-format fixtures: the CLI smoke runs, licence refusal, and what lands in MLflow."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import licensed_fixtures as fixtures
import pytest
from helpers import cli_train
from mlflow import MlflowClient
from stage_configs import compose_stage

from calibration.calibrate import calibrate
from core.errors import WorkbenchError
from export.pipeline import export
from models.train import train

REPO = Path(__file__).resolve().parents[2]


def only_run(uri: str):
    client = MlflowClient(uri)
    (run,) = [r for e in client.search_experiments() for r in client.search_runs(e.experiment_id)]
    return client, run


def test_training_on_utkface_records_card_licence_quarantine_and_dataset_inputs(compose_train, tracking_uri, tmp_path):
    root = fixtures.utkface(tmp_path / "UTKFace", n=60)
    cfg = compose_train("experiment=age_utkface", f"data.root={root}", "debug=smoke", "data.max_bad_fraction=0.05")
    metrics = train(cfg)
    assert metrics["data/age/images"] == 60 and metrics["data/age/quarantined"] == 2

    client, run = only_run(tracking_uri)
    tags = run.data.tags
    assert (tags["data.name"], tags["data.licence"]) == ("utkface", "UTKFace-non-commercial-research")
    assert (tags["data.intended_use"], tags["data.permitted_uses"], tags["data.contains_minors"]) == (
        "research",
        "research",
        "true",
    )
    artifacts = {
        a.path for folder in ("data/card", "data/quarantine") for a in client.list_artifacts(run.info.run_id, folder)
    }
    assert artifacts == {
        "data/card/utkface.yaml",
        "data/quarantine/quarantine.csv",
        "data/quarantine/quarantine_summary.json",
    }
    inputs = {i.dataset.name: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"utkface:train", "utkface:val", "utkface:calib", "utkface:test"}
    assert inputs["utkface:train"].digest == tags["data.digest"][:32]
    assert "manifest.parquet" in inputs["utkface:train"].source


def test_commercial_run_on_research_only_data_is_refused(compose_train, tracking_uri, tmp_path):
    root = fixtures.utkface(tmp_path / "UTKFace", n=4)
    cfg = compose_train("experiment=age_utkface", f"data.root={root}", "debug=smoke", "intended_use=commercial")
    with pytest.raises(WorkbenchError, match="permits research; this run's intended_use is 'commercial'"):
        train(cfg)


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize(
    ("experiment", "build"),
    [
        ("age_utkface", lambda root: fixtures.utkface(root, n=300)),
        (
            "content_imagefolder",
            lambda root: (
                fixtures.write_card(
                    fixtures.content_folders(root, per_folder=12) / "dataset_card.yaml", ["research"]
                ).parent
            ),
        ),
    ],
)
def test_cli_smoke_trains_on_licensed_fixtures(tmp_path, tracking_uri, experiment, build):
    root = build(tmp_path / "dataset")
    command = cli_train(tmp_path / "outputs", tmp_path / "cache", f"experiment={experiment}", f"data.root={root}")
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=os.environ | {"COLUMNS": "120"})
    assert done.returncode == 0, done.stderr[-3000:]
    _, run = only_run(tracking_uri)
    assert run.info.status == "FINISHED"
    assert run.data.tags["data.name"] in experiment  # utkface, content_imagefolder
    assert any(key.startswith("test/") for key in run.data.metrics)


def test_a_refused_ingest_leaves_a_failed_run_with_the_quarantine_report(compose_train, tracking_uri, tmp_path):
    root = fixtures.utkface(tmp_path / "UTKFace", n=20)  # 2 of its 22 names do not parse
    cfg = compose_train("experiment=age_utkface", f"data.root={root}", "debug=smoke", "data.max_bad_fraction=0.01")
    with pytest.raises(WorkbenchError, match=r"2 of 22 files \(9\.1%\) failed integrity checks"):
        train(cfg)
    client, run = only_run(tracking_uri)
    assert run.info.status == "FAILED" and run.data.tags["failure"].startswith("IngestRefused: 2 of 22 files")
    reports = {a.path for a in client.list_artifacts(run.info.run_id, "data/refused")}
    assert reports == {"data/refused/quarantine.csv", "data/refused/quarantine_summary.json"}


@pytest.mark.slow
@pytest.mark.ci  # ingest of 1,500 files, a short training, calibration and export: about a minute
def test_card_licence_and_crop_flow_into_the_export_contract_and_model_card(tmp_path, tracking_uri):
    root = fixtures.utkface(tmp_path / "UTKFace", n=1500)

    def stage(name: str, *overrides: str):
        return compose_stage(name, tmp_path, tmp_path / "cache", *overrides)

    train(stage("train", "experiment=age_utkface", f"data.root={root}", "trainer.max_epochs=1"))
    calibrate(stage("calibrate", "train_task=age_utkface", "calibration.age.max_minor_pass_rate=0.2"))
    # One epoch on 1,500 fixture faces may buy its gates by flagging most adults: this test is about lineage.
    export(
        stage(
            "export",
            "train_task=age_utkface",
            f"export.release_dir={tmp_path / 'releases'}",
            "export.allow_degenerate=true",
        )
    )

    bundle = tmp_path / "releases" / "childsafe-age_utkface"
    data = json.loads((bundle / "contract.json").read_text())["data"]
    assert (data["name"], data["licence"], data["intended_use"], data["synthetic"]) == (
        "utkface",
        "UTKFace-non-commercial-research",
        "research",
        False,
    )
    assert data["card"]["permitted_uses"] == ["research"] and data["card"]["contains_minors"] is True
    crop = data["crop"]
    assert (crop["margin"], crop["square"], crop["size"], crop["function"]) == (
        0.4,
        True,
        64,
        "childsafe_runtime.crop.crop_face",
    )
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("childsafe-age_utkface").experiment_id
    (trained,) = client.search_runs([experiment], filter_string="tags.stage = 'train'")
    manifest = Path(client.download_artifacts(trained.info.run_id, "data/manifest.parquet", str(tmp_path / "dl")))
    assert data["digest"] == hashlib.sha256(manifest.read_bytes()).hexdigest()  # what `sha256sum` recomputes
    version = client.get_model_version_by_alias("childsafe-age_utkface", "candidate")
    assert (version.tags["data.licence"], version.tags["data.permitted_uses"]) == (data["licence"], "research")
    card = (bundle / "model_card.md").read_text()
    assert "licence UTKFace-non-commercial-research" in card
    assert "permitted uses research (this model: research)" in card


@pytest.mark.slow
@pytest.mark.ci  # ingest of 1,500 boxed frames, one epoch, calibration and export: about a minute
def test_a_non_default_crop_and_border_reach_the_contract_the_card_and_the_runtime(tmp_path, tracking_uri):
    """Issue 16 acceptance 2: the contract's crop is the one ingest cut with, and the centre crop evaluation took."""
    import numpy as np
    import torch
    from childsafe_runtime.consumer import Filter
    from PIL import Image

    from tracking.runs import resolve_trained_run

    root = fixtures.age_manifest_with_boxes(tmp_path / "boxed", n=1500)
    crop = ("data.crop.margin=0.25", "data.crop.square=false", "data.crop.min_face_side=20")
    framing = ("data.image_size=72", "data.input_size=64", "augment=face")

    def stage(name: str, *overrides: str):
        return compose_stage(name, tmp_path, tmp_path / "cache", *overrides)

    data = ("data=age_manifest", f"data.root={root}")
    train(stage("train", "experiment=age_utkface", *data, *crop, *framing, "trainer.max_epochs=1"))
    calibrate(stage("calibrate", "train_task=age_utkface", "calibration.age.max_minor_pass_rate=0.2"))
    releases = f"export.release_dir={tmp_path / 'releases'}"
    export(stage("export", "train_task=age_utkface", releases, "export.allow_degenerate=true"))

    bundle = tmp_path / "releases" / "childsafe-age_utkface"
    spec = json.loads((bundle / "contract.json").read_text())["input"]
    face_crop = spec["face_crop"]
    assert (face_crop["margin"], face_crop["square"], face_crop["min_face_side"]) == (0.25, False, 20)
    assert spec["resize"]["output_size"] == [72, 72] and spec["network_size"] == 64
    assert (spec["centre_crop"]["offset"], spec["centre_crop"]["size"]) == (4, [64, 64])
    card = (bundle / "model_card.md").read_text()
    assert "grown by 0.25 of its size on each side" in card and "the centre 64x64 (offset 4)" in card

    # The runtime, given a frame and its box, scores what the evaluated model scores on evaluation's pixels.
    trained = resolve_trained_run("latest", None, tmp_path / "dl", train_task="age_utkface")
    module, datamodule = trained.load_model().eval(), trained.datamodule()
    assert module.framing.describe() == {"cache_size": 72, "input_size": 64, "offset": 4}
    rows = datamodule.split_manifest("test").head(8)
    pixels = datamodule.dataset("test").__getitems__(list(range(len(rows))))["image"]
    with torch.no_grad():
        expected = module(pixels)["expected_age"].numpy()
    consumer = Filter(bundle)
    for i, (_, row) in enumerate(rows.iterrows()):
        frame = np.asarray(Image.open(root / row["path"]).convert("RGB"))
        box = [row["box_x0"], row["box_y0"], row["box_x1"], row["box_y1"]]
        (face,) = consumer.decide(frame, [box])["faces"]
        assert abs(face["outputs"]["expected_age"] - expected[i]) < 1e-3, (row["path"], face, expected[i])
