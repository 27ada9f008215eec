"""Export a calibrated model as a self-describing ONNX bundle: `childsafe export train_task=age_synthetic`.

Stages the bundle in a temporary folder, proves onnxruntime agrees with the evaluated PyTorch model
on the full calib and test splits (the parity gate), and only then moves it into the release folder.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from childsafe_runtime.crop import CropConvention
from childsafe_runtime.integrity import sha256_file
from childsafe_runtime.signing import signing_record
from omegaconf import DictConfig, OmegaConf

from calibration.state import CalibrationState
from core.errors import WorkbenchError
from core.hydra_app import console, show_metrics
from evaluation.scorecard import scorecard
from evaluation.shortfalls import shortfall_warnings
from export.bundle import publish, release_key, staging_folder, write_sums
from export.contract import build_contract, contract_text
from export.metrics import headline, sliced
from export.model_card import render_model_card, render_version_description
from export.onnx_export import embed_contract, export_onnx
from export.parity import check_parity, check_sizes, onnx_outputs, recount_certificates, reference_outputs
from export.quantize import judge, quantize
from export.wrapper import AgeExportWrapper, ContentExportWrapper
from models.resize import Framing
from tracking.mlflow_run import append_description, finished_runs_under, log_metrics, run_link, stage_run
from tracking.registry import register_bundle, set_version_description
from tracking.runs import latest_run, resolve_trained_run


class ParityError(WorkbenchError):
    """onnxruntime and PyTorch disagree: nothing was published."""


def load_calibration(cfg: DictConfig, download_dir: Path) -> tuple[CalibrationState, str | None]:
    if cfg.calibration_state:
        return CalibrationState.load(Path(cfg.calibration_state)), None
    from mlflow import MlflowClient

    from tracking.mlflow_run import default_tracking_uri
    from tracking.runs import latest_train_run

    run_id = cfg.calibration_run
    if run_id == "latest":
        train_run = latest_train_run(cfg.train_task)
        run_id = latest_run(
            "calibrate",
            f"tags.`lineage.parent_run_id` = '{train_run}'",
            f"Calibrate it first: `childsafe calibrate train_task={cfg.train_task}`.",
        )
    path = MlflowClient(default_tracking_uri()).download_artifacts(
        run_id, "calibration/calibration_state.json", str(download_dir)
    )
    return CalibrationState.load(Path(path)), run_id


MANIFEST_ARTIFACT = "data/manifest.parquet"  # where the train stage logs the manifest file it trained from


def build_wrapper(module, state: CalibrationState, coverage: float):
    if state.ood is None:
        raise WorkbenchError(
            "The calibration state has no out-of-distribution fit (`ood`): it was written before schema-2 bundles. "
            "Re-run `childsafe calibrate` for this training run, then export again."
        )
    if state.task == "content":
        return ContentExportWrapper(module, state.content, state.operating_points, state.ood)
    return AgeExportWrapper(module, state.age, state.operating_points, coverage, state.ood)


def manifest_record(manifest_file: Path) -> dict[str, str]:
    """`data.digest`: the sha256 of the manifest file's bytes, which any client recomputes with `sha256sum`."""
    return {
        "digest": sha256_file(manifest_file),
        "digest_algorithm": "sha256",
        "manifest_file": manifest_file.name,
        "manifest_artifact": MANIFEST_ARTIFACT,
        "digest_note": f"sha256 of the bytes of {manifest_file.name} as logged to the training run's MLflow "
        f"artefacts ({MANIFEST_ARTIFACT}); recompute with `sha256sum {manifest_file.name}`",
    }


@dataclass(frozen=True)
class ExportInputs:
    """What an export needs: the evaluated model and calibration, the wrapper to export, and the parity data."""

    module: Any
    wrapper: Any
    state: CalibrationState
    images: np.ndarray  # uint8 NHWC, the calib and test rows
    rows: pd.DataFrame  # their manifest rows (split, subject_id, target, attributes)
    target: str
    data: dict
    release: dict  # how the model was made: debug_run, max_false_alarm_rate (from the training and calib runs)


class DegeneratePointError(WorkbenchError):
    """An operating point flags so many negatives that its certified recall is worthless: nothing was published."""


def _share(rate: float | None) -> str:
    return "an unmeasured share" if rate is None else f"{rate:.1%}"


def degenerate_warnings(state: CalibrationState, ceiling: float, allow: bool) -> list[str]:
    """Refuse points that buy their recall by flagging (nearly) everything, unless explicitly allowed."""
    messages = [
        f"operating point '{p.name}' flags {_share(p.false_alarm_rate)} of calib and "
        f"{_share(p.test.get('false_alarm_rate'))} of test negatives (ceiling {ceiling:g})"
        for p in state.operating_points
        if p.degenerate
    ]
    if messages and not allow:
        raise DegeneratePointError(
            "Refusing to publish degenerate operating points: "
            + "; ".join(messages)
            + ". Such a point meets its recall target by flagging nearly every frame. Lower the recall target "
            "(calibration.content.min_recall / calibration.age.max_minor_pass_rate), calibrate on more or cleaner "
            "calib data, or publish anyway with export.allow_degenerate=true (recorded as a warning in the contract)."
        )
    return [f"published although degenerate: {message}" for message in messages]


def face_crop_of(data: dict, framing: Framing) -> CropConvention:
    """The contract's face crop: the one the training data was cut with, never a setting of its own."""
    crop = data.get("crop")
    if crop is None:
        raise WorkbenchError(
            "The training data's record states no face crop, so the contract could not say how a runtime must cut "
            "faces. Age data must set data.crop (configs/data/); a run trained before the crop was recorded "
            "must be retrained."
        )
    if (crop["size"], crop["input_size"]) != (framing.cache_size, framing.input_size):
        raise WorkbenchError(
            f"The data was cached at {crop['size']} px with a {crop['input_size']} px network input, but the model "
            f"frames {framing.cache_size} px around {framing.input_size} px: model.image_size and model.cache_size "
            "must follow data.input_size and data.image_size (the default interpolations do)."
        )
    return CropConvention(crop["margin"], crop["square"], crop["min_face_side"])


def build_bundle(settings: DictConfig, inputs: ExportInputs, staging: Path, report_dir: Path) -> dict:
    """Export into `staging`, prove parity on the calib and test images, then write contract, card and sums."""
    state, rows, target = inputs.state, inputs.rows, inputs.target
    warnings = degenerate_warnings(state, inputs.release["max_false_alarm_rate"], settings.allow_degenerate)
    signing_key = release_key(settings.signing.key)  # an unreadable key fails before the export work
    face_crop = face_crop_of(inputs.data, inputs.module.framing) if state.task == "age" else None
    exporter = export_onnx(inputs.wrapper, staging / "model.onnx", settings.opset)
    device = settings.get("device")  # the network's side of the parity check; the graph runs on onnxruntime's CPU
    reference = reference_outputs(inputs.module, state, inputs.images, settings.coverage, device)
    exported = onnx_outputs(staging / "model.onnx", inputs.images)
    report = check_parity(state, reference, exported, rows, target)
    calib_images = inputs.images[(rows["split"] == "calib").to_numpy()]
    check_sizes(inputs.module, state, staging / "model.onnx", calib_images, settings.coverage, report, device)
    (report_dir / "parity.json").write_text(json.dumps(report.__dict__, indent=2))
    if not report.passed:
        raise ParityError("Parity gate failed, nothing was published:\n  - " + "\n  - ".join(report.failures))

    is_test = (rows["split"] == "test").to_numpy()
    quantization, shipped = None, reference  # the figures are the evaluated model's, as evaluate reports them
    if settings.quantize == "int8":
        quantization = try_int8(staging / "model.onnx", inputs, is_test)
        if quantization["kept"]:
            shipped = onnx_outputs(staging / "model.onnx", inputs.images)  # INT8 ships: its own figures
    test_outputs, test_rows = {k: v[is_test] for k, v in shipped.items()}, rows[is_test]
    metrics = {
        "headline": {
            "name": "mae" if state.task == "age" else "accuracy",
            **headline(state.task, test_outputs, test_rows, target),
        },
        "slices": sliced(state.task, test_outputs, test_rows, target, list(settings.slice_attributes)),
        "parity": {
            "samples": report.samples,
            "max_abs_diff": report.max_abs_diff,
            "certified_misses": report.certified_misses,
            "sizes": report.sizes,
        },
    }
    contract = build_contract(
        state,
        settings.model_name,
        inputs.module.framing,
        settings.coverage,
        inputs.data | {"test_size": int(is_test.sum())},
        metrics,
        settings.opset,
        exporter,
        OmegaConf.to_container(settings.smoothing),
        face_crop,
        inputs.release
        | {
            "allow_degenerate": bool(settings.allow_degenerate),
            "warnings": warnings,
            "signing": signing_record(signing_key),
        },
        quantization,
    )
    contract["release"]["warnings"] += shortfall_warnings(contract)  # read from the figures the contract ships
    (staging / "contract.json").write_text(contract_text(contract))
    embed_contract(staging / "model.onnx", contract)
    (staging / "model_card.md").write_text(render_model_card(contract))
    write_sums(staging, signing_key)
    return contract


def try_int8(model: Path, inputs: ExportInputs, is_test: np.ndarray) -> dict:
    """Quantise next to `model`; replace it only if INT8 is faster, within tolerance and keeps every certificate."""
    int8 = model.with_name("model.int8.onnx")
    quantize(model, int8, inputs.images[~is_test])
    gates = [g.gate for g in inputs.state.age.gates] if inputs.state.task == "age" else []
    verdict = judge(
        inputs.state.task,
        model,
        int8,
        inputs.images[is_test],
        inputs.rows[inputs.target].to_numpy()[is_test],
        gates,
        inputs.module.framing.cache_size,
    )
    if verdict.kept:
        counts = recount_certificates(inputs.state, onnx_outputs(int8, inputs.images), inputs.rows)
        broken = [
            f"{name}: {c['graph']} calib misses, certified {c['certified']}"
            for name, c in counts.items()
            if c["graph"] != c["certified"]
        ]
        if broken:
            verdict = replace(
                verdict,
                kept=False,
                reasons=[*verdict.reasons, "INT8 changes certified miss counts (" + "; ".join(broken) + ")"],
            )
    if verdict.kept:
        os.replace(int8, model)
    else:
        int8.unlink()
        console.print("[yellow]INT8 refused, the bundle stays fp32:[/] " + "; ".join(verdict.reasons))
    return {"requested": "int8", "method": "onnxruntime static QDQ, Conv/MatMul/Gemm, per-channel", **verdict.to_dict()}


def publish_bundle(settings: DictConfig, inputs: ExportInputs, report_dir: Path) -> tuple[Path, dict]:
    """Stage, check and publish atomically: on any failure the release folder is left as it was."""
    release_root = Path(settings.release_dir)
    staging = staging_folder(release_root)
    try:
        contract = build_bundle(settings, inputs, staging, report_dir)
        return publish(staging, release_root / settings.model_name), contract
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_calibrated_model(cfg: DictConfig, download_dir: Path):
    """The calibration state, its MLflow run, the training run it calibrated, and the loaded model."""
    state, calibration_run = load_calibration(cfg, download_dir)
    checkpoint = None if state.train_run_id else state.checkpoint
    trained = resolve_trained_run(state.train_run_id, checkpoint, download_dir, expected_task=state.task)
    return state, calibration_run, trained, trained.load_model().eval()


def release_record(train_config: DictConfig, state: CalibrationState) -> dict:
    """What a promotion gate must know about how the model was made: a debug-sized run never ships."""
    return {
        "debug_run": "smoke" in train_config or bool(train_config.get("trainer", {}).get("fast_dev_run", False)),
        "max_false_alarm_rate": state.max_false_alarm_rate,
    }


def export(cfg: DictConfig) -> dict[str, float]:
    output_dir = Path(cfg.paths.output_dir)
    state, calibration_run, trained, module = load_calibrated_model(cfg, output_dir / "source")
    datamodule = trained.datamodule()
    coverage = state.interval_coverage(cfg.export.coverage)
    cached = datamodule.load()
    rows = cached.manifest[cached.manifest["split"].isin(["calib", "test"])]
    data = datamodule.data_record() | manifest_record(cached.manifest_path)
    inputs = ExportInputs(
        module,
        build_wrapper(module, state, coverage),
        state,
        np.asarray(cached.images[rows.index.to_numpy()]),
        rows,
        datamodule.target,
        data,
        release_record(trained.config, state),
    )
    settings = OmegaConf.merge(
        cfg.export,
        {"coverage": coverage, "slice_attributes": list(cfg.export.slice_attributes or datamodule.slice_attributes)},
    )
    with stage_run("export", calibration_run or trained.run_id, state.task, trained.experiment) as (client, run_id):
        bundle, contract = publish_bundle(settings, inputs, output_dir)
        metrics = {
            f"export/{state.task}/parity_max_abs_diff/{k}": v
            for k, v in contract["metrics"]["parity"]["max_abs_diff"].items()
        }
        headline_metric = contract["metrics"]["headline"]
        metrics[f"test/{state.task}/{headline_metric['name']}"] = headline_metric["value"]
        log_metrics(client, run_id, metrics)
        client.log_artifacts(run_id, str(bundle), "bundle")
        version = register_bundle(run_id, bundle, contract, cfg.export.model_name) if cfg.export.register else None
        if version:
            links = version_links(client, trained.run_id, calibration_run, run_id)
            description = render_version_description(contract, scorecard(state), links)
            set_version_description(client, cfg.export.model_name, version, description)
        if trained.run_id:
            registered = f", registered as {cfg.export.model_name} version {version}" if version else ""
            line = f"- export: [run]({run_link(client, run_id)}), bundle `{bundle.name}`{registered}"
            append_description(client, trained.run_id, line)
    show_metrics(
        metrics,
        f"export of {state.task}",
        {
            "bundle": str(bundle),
            "mlflow run": run_id,
            "registered": f"{cfg.export.model_name} version {version} (alias candidate)" if version else "no",
        },
    )
    return metrics


def version_links(client, train_run: str | None, calibration_run: str | None, export_run: str) -> dict[str, str]:
    """Where a reviewer goes from a model version: its runs, and the evaluation report of its calibration."""
    links = {"train run": run_link(client, train_run)} if train_run else {}
    if calibration_run:
        links["calibrate run"] = run_link(client, calibration_run)
        experiment = client.get_run(calibration_run).info.experiment_id
        evaluated = finished_runs_under(client, experiment, "evaluate", [calibration_run])
        if evaluated:
            links["evaluate run"] = run_link(client, evaluated[0].info.run_id)
            links["report"] = run_link(client, evaluated[0].info.run_id, "evaluation/report.html")
    return links | {"export run": run_link(client, export_run)}
