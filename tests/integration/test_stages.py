"""Calibrate and export on small trained runs, against a temporary MLflow store."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from childsafe_runtime.consumer import Filter
from mlflow import MlflowClient
from stage_configs import compose_stage

from calibration.calibrate import STATE_FILE, calibrate
from calibration.state import CalibrationState
from core.errors import WorkbenchError
from evaluation.evaluate import evaluate
from evaluation.glossary import METRICS_TABLE
from export.pipeline import DegeneratePointError, export
from models.train import train
from tracking.runs import resolve_trained_run

SMALL = ("debug=smoke", "data.generator.num_subjects=600")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_cache):
    """One small age run and one small content run in a module-wide MLflow store."""
    root = tmp_path_factory.mktemp("calibrate")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        for experiment in ("age_synthetic", "content_synthetic"):
            train(compose_stage("train", root, shared_cache, f"experiment={experiment}", *SMALL))
        yield root, patch


def _calibrate(trained, shared_cache, *overrides):
    root, _ = trained
    return compose_stage("calibrate", root, shared_cache, *overrides)


def test_age_calibration_logs_a_linked_run_with_state_and_operating_points(trained, shared_cache):
    root, _ = trained
    cfg = _calibrate(
        trained,
        shared_cache,
        "train_task=age_synthetic",
        "calibration.age.max_minor_pass_rate=0.1",
        "calibration.age.mondrian=true",
    )
    metrics = calibrate(cfg)
    for gate in ("13", "16", "18"):
        assert 0.0 <= metrics[f"calib/age/gate{gate}/threshold"] <= 1.0
        assert metrics[f"calib/age/gate{gate}/minor_pass_rate_upper_bound"] <= 0.1
        assert f"test/age/gate{gate}/adult_false_rejection" in metrics
        assert f"test/age/gate{gate}/false_rejection_age{gate}" in metrics  # adult false rejection year by year
        assert f"test/age/gate{gate}/pass_rate_age{int(gate) - 1}" in metrics  # the year just below the gate
    assert 0.0 <= metrics["test/age/interval90/coverage"] <= 1.0
    state = CalibrationState.load(Path(cfg.paths.output_dir) / STATE_FILE)
    assert state.task == "age" and state.age.intervals[0].group_by == ["sex", "skin_tone_bin"]
    assert [p.name for p in state.operating_points] == ["gate13", "gate16", "gate18"]

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.stage = 'calibrate'")
    run = next(r for r in runs if r.data.tags["task"] == "age")
    assert run.info.status == "FINISHED"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    # One tag vocabulary: `task` is age or content on every run, `experiment` the training experiment; a
    # child run's name carries both the experiment and the time, so two pipelines' runs tell apart.
    assert (parent.data.tags["stage"], parent.data.tags["task"], parent.data.tags["experiment"]) == (
        "train",
        "age",
        "age_synthetic",
    )
    assert run.data.tags["experiment"] == "age_synthetic"
    assert re.fullmatch(r"calibrate-age_synthetic-\d{8}-\d{6}", run.info.run_name)
    artifacts = {
        a.path for folder in ("calibration", "figures") for a in client.list_artifacts(run.info.run_id, folder)
    }
    assert {"calibration/calibration_state.json", "figures/reliability_age_test.png"} <= artifacts
    assert "calib/age/gate18/threshold" in run.data.metrics


def test_content_calibration_keeps_accuracy_and_certifies_recall(trained, shared_cache):
    metrics = calibrate(
        _calibrate(trained, shared_cache, "train_task=content_synthetic", "calibration.content.min_recall=0.9")
    )
    assert metrics["test/content/accuracy_after"] == metrics["test/content/accuracy_before"]
    assert metrics["calib/content/recall_explicit/recall_lower_bound"] >= 0.9
    assert "test/content/ece_after" in metrics and "calib/content/ece_before" in metrics
    assert not any(key.endswith("/ece") for key in metrics)  # calibrated and uncalibrated never share a name


def test_too_small_calib_split_is_refused_with_the_size_needed(trained, shared_cache):
    with pytest.raises(WorkbenchError, match=r"too few to certify.*at least 299"):
        calibrate(_calibrate(trained, shared_cache, "train_task=age_synthetic"))


def test_unknown_run_id_is_named(trained, shared_cache):
    with pytest.raises(WorkbenchError, match=r"run_id=0123456789abcdef: no such MLflow run"):
        calibrate(_calibrate(trained, shared_cache, "run_id=0123456789abcdef"))


def test_checkpoint_of_the_wrong_task_is_named(trained, shared_cache):
    root, _ = trained
    checkpoint = next((root / "outputs" / "content_synthetic").rglob("last.ckpt"))
    with pytest.raises(WorkbenchError, match=r"holds a 'content' model, but this stage was asked for task=age"):
        calibrate(_calibrate(trained, shared_cache, f"checkpoint={checkpoint}", "expected_task=age"))


def test_export_publishes_a_registered_bundle_the_consumer_agrees_with(trained, shared_cache):
    root, _ = trained
    calibrate(_calibrate(trained, shared_cache, "train_task=content_synthetic", "calibration.content.min_recall=0.9"))
    refused = compose_stage(
        "export", root, shared_cache, "train_task=content_synthetic", f"export.release_dir={root / 'releases'}"
    )
    # A smoke-trained model reaches 90% recall only by flagging nearly every frame: export refuses it by name.
    with pytest.raises(DegeneratePointError, match=r"operating point 'recall_unsafe' flags"):
        export(refused)
    cfg = compose_stage(
        "export",
        root,
        shared_cache,
        "train_task=content_synthetic",
        f"export.release_dir={root / 'releases'}",
        "export.allow_degenerate=true",
    )
    export(cfg)
    bundle = root / "releases" / "childsafe-content_synthetic"
    contract = json.loads((bundle / "contract.json").read_text())
    assert contract["data"]["synthetic"] is True and contract["task"] == "content"
    assert contract["release"]["debug_run"] is True
    assert contract["release"]["warnings"][0].startswith("published although degenerate")
    assert contract["metrics"]["parity"]["samples"] > 0

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    version = client.get_model_version_by_alias("childsafe-content_synthetic", "candidate")
    safety = json.loads(version.tags["safety"])
    assert safety["headline"]["value"] == contract["metrics"]["headline"]["value"]  # one figure everywhere
    assert version.tags["recall_explicit.certified_unit"] == "scenes"
    export_run = client.get_run(version.run_id)
    assert export_run.data.tags["stage"] == "export" and export_run.info.status == "FINISHED"
    # The version explains itself: verdict, what it is, its data and licence, and links to its runs.
    described = version.description
    assert described.startswith("**FAIL: ") and "degenerate" in described  # published only with allow_degenerate
    assert "explicit-content classification, classes safe, suggestive, explicit" in described
    assert "licence CC0-1.0" in described and "a debug-sized run, never to ship" in described
    for name in ("train run", "calibrate run", "export run"):
        assert f"[{name}](#/experiments/" in described, name

    # The consumer's decisions on the test split equal the evaluation stage's per-sample decisions.
    evaluation = compose_stage("evaluate", root, shared_cache, "train_task=content_synthetic")
    evaluate(evaluation)
    predictions = pd.read_parquet(Path(evaluation.paths.output_dir) / "predictions.parquet")
    # The certified stream policy reaches the reviewer: a scorecard row, and its figure in the report.
    assert contract["stream"]["certified"]
    report_text = (Path(evaluation.paths.output_dir) / "report.md").read_text()
    assert f"stream: {contract['stream']['policy']['k']} of {contract['stream']['policy']['n']}" in report_text
    assert (
        "Live streams: recall against interruptions" in (Path(evaluation.paths.output_dir) / "report.html").read_text()
    )
    calibration_run = client.get_run(export_run.data.tags["mlflow.parentRunId"])
    trained_run = resolve_trained_run(calibration_run.data.tags["mlflow.parentRunId"], None, root / "dl")
    datamodule = trained_run.datamodule()
    rows = datamodule.split_manifest("test")
    assert predictions["id"].tolist() == rows["id"].tolist()
    records = Filter(bundle).run(np.asarray(datamodule.load().images[rows.index.to_numpy()]))
    for point in contract["operating_points"]:
        score = (
            predictions["unsafe_score"]
            if point["score"]["output"] == "unsafe_score"
            else predictions[f"p_{contract['labels']['classes'][point['score']['column']]}"]
        ).to_numpy()
        outside = np.abs(score - point["threshold"]) > 1e-5
        consumer = np.array([r["decisions"][point["name"]] for r in records])
        assert np.array_equal(consumer[outside], predictions[f"block_{point['name']}"].to_numpy()[outside])


def test_evaluate_age_writes_report_predictions_and_linked_run(trained, shared_cache):
    root, _ = trained
    calibrate(_calibrate(trained, shared_cache, "train_task=age_synthetic", "calibration.age.max_minor_pass_rate=0.1"))
    cfg = compose_stage("evaluate", root, shared_cache, "train_task=age_synthetic")
    numbers = evaluate(cfg)
    output = Path(cfg.paths.output_dir)
    predictions = pd.read_parquet(output / "predictions.parquet")
    assert {
        "id",
        "subject_id",
        "age",
        "sex",
        "skin_tone_bin",
        "expected_age",
        "p_below_18",
        "interval_low",
        "block_gate18",
    } <= set(predictions.columns)
    assert numbers["test/age/mae"] == pytest.approx((predictions["expected_age"] - predictions["age"]).abs().mean())
    html = (output / "report.html").read_text()
    assert "SYNTHETIC" in html and html.count("data:image/png;base64,") >= 4
    assert "<img" in html and "http" not in html.split("<body>")[1]  # self-contained: nothing to fetch
    robustness = pd.read_csv(output / "robustness.csv")
    assert set(robustness["perturbation"]) == {
        "gaussian_blur_sigma1.5",
        "jpeg_quality20",
        "low_light_x0.35",
        "sensor_noise_sigma15",
        "occlusion_30pct",
    }
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.stage = 'evaluate' and tags.task = 'age'"
    )
    assert runs and runs[0].info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "evaluation")} >= {
        "evaluation/report.html",
        "evaluation/predictions.parquet",
    }
    # The reviewer's view: the verdict leads the description and the report, the scorecard is a table,
    # and the train run's description links its calibrate and evaluate runs.
    evaluated = runs[0]
    assert {k: evaluated.data.params[k] for k in ("split", "coverage", "base_rate")} == {
        "split": "test",
        "coverage": "0.9",
        "base_rate": "0.005",
    }
    assert evaluated.data.params["calibration_run"] == evaluated.data.tags["lineage.parent_run_id"]
    assert evaluated.data.params["slice_attributes"] == "sex,skin_tone_bin"  # the data config's, not a global list
    shown = {a.path for a in client.list_artifacts(evaluated.info.run_id, "evaluation/figures")}
    assert "evaluation/figures/reliability_of_p_age_t.png" in shown and len(shown) == html.count("<img")
    (split_input,) = evaluated.inputs.dataset_inputs
    assert split_input.dataset.name == "synthetic-faces:test"
    description = evaluated.data.tags["mlflow.note.content"]
    assert description.startswith(("**Safety verdict: PASS", "**Safety verdict: FAIL"))
    assert f"runs/{evaluated.info.run_id}/artifacts/evaluation/report.html" in description
    table = Path(client.download_artifacts(evaluated.info.run_id, "evaluation/scorecard.json", str(root / "dl")))
    logged = json.loads(table.read_text())  # mlflow.log_table's format: {"columns": [...], "data": [rows]}
    card = pd.DataFrame(logged["data"], columns=logged["columns"])
    assert list(card["operating point"]) == ["gate13", "gate16", "gate18"] and set(card["verdict"]) <= {"PASS", "FAIL"}
    assert html.index('id="verdict"') < html.index("Safety scorecard") < html.index("Headline metrics")
    assert html.index("Headline metrics") < html.index('<details id="all-metrics">') == html.rindex("<details")
    # Every figure with its interval, unit and meaning in the metrics table; only values (and each point's
    # headline bound) as metrics, so MLflow's charts are not dozens of interval sections.
    logged = json.loads(Path(client.download_artifacts(evaluated.info.run_id, METRICS_TABLE, str(root / "dl")))
                        .read_text())  # fmt: skip
    figures = pd.DataFrame(logged["data"], columns=logged["columns"]).set_index("metric")
    mae = figures.loc["test/age/mae"]
    assert mae["unit"] == "years" and 0 < mae["ci_low"] <= mae["value"] <= mae["ci_high"]
    assert mae["value"] == pytest.approx(numbers["test/age/mae"], rel=1e-9)  # log_table keeps 10 decimals
    assert (figures["unit"] != "").all() and (figures["meaning"] != "").all()
    bounds = {key for key in evaluated.data.metrics if "_ci_" in key}
    assert bounds == {f"test/age/gate{gate}/minor_pass_rate_ci_high" for gate in (13, 16, 18)}
    assert set(evaluated.data.metrics) - bounds == set(figures.index[figures["value"].notna()])
    train_run = client.get_run(evaluated.data.tags["lineage.parent_run_id"]).data.tags["lineage.parent_run_id"]
    train_description = client.get_run(train_run).data.tags["mlflow.note.content"]
    assert "- calibrate: [run](#/experiments/" in train_description
    evaluate_link = f"#/experiments/{evaluated.info.experiment_id}/runs/{evaluated.info.run_id}"
    assert f"- evaluate: [run]({evaluate_link})" in train_description


def test_evaluate_a_missing_split_is_named(trained, shared_cache):
    root, _ = trained
    with pytest.raises(WorkbenchError, match=r"split=holdout has no rows"):
        evaluate(
            compose_stage(
                "evaluate", root, shared_cache, "train_task=age_synthetic", "split=holdout", "calibration_run=null"
            )
        )


def test_temperature_rescues_an_overconfident_content_model(trained, shared_cache):
    """The trained content model with its logits scaled up 5x: temperature halves test ECE, accuracy unchanged."""
    from calibration.fit import calibrate_content
    from models.predict import predict

    root, _ = trained
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.stage = 'train' and tags.experiment = 'content_synthetic'",
    )[0]
    trained_run = resolve_trained_run(run.info.run_id, None, root / "overconfident")
    model, datamodule = trained_run.load_model(), trained_run.datamodule()
    calib, test = (predict(model, datamodule.dataset(split)) for split in ("calib", "test"))
    for outputs in (calib, test):
        outputs["logits"] = outputs["logits"] * 5.0
    settings = compose_stage("calibrate", root, shared_cache, "calibration.content.min_recall=0.9").calibration
    manifest = datamodule.load().manifest
    result = calibrate_content(calib, test, manifest, list(model.hparams.classes), settings, root / "figures")
    metrics = result.metrics
    assert result.content.temperature > 1.5
    assert metrics["test/content/ece_after"] <= 0.5 * metrics["test/content/ece_before"]
    assert metrics["test/content/accuracy_after"] == metrics["test/content/accuracy_before"]


def test_a_checkpoint_with_an_unexpected_pickled_object_is_refused(trained, tmp_path):
    import torch
    from helpers import Payload

    root, _ = trained
    original = next((root / "outputs" / "age_synthetic").rglob("last.ckpt"))
    run_dir = tmp_path / "runs" / "tampered"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config_resolved.yaml").write_text((original.parent.parent / "config_resolved.yaml").read_text())
    checkpoint = torch.load(original, map_location="cpu", weights_only=True)
    checkpoint["extra"] = Payload()
    torch.save(checkpoint, run_dir / "checkpoints" / "last.ckpt")
    trained_run = resolve_trained_run(None, str(run_dir / "checkpoints" / "last.ckpt"), tmp_path)
    with pytest.raises(WorkbenchError, match=r"pickled object outside the safe allow-list"):
        trained_run.load_model()
