"""Calibrate a trained model on its calib split: `childsafe calibrate train_task=age_synthetic`.

Reads the training run (MLflow run id, `latest`, or a checkpoint), fits the calibrators and the
operating points on the calib split only, measures them on calib and test, and logs the state,
figures and metrics to an MLflow run nested under the training run.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from calibration.fit import calibrate_age, calibrate_content
from calibration.ood import OODCalibration
from calibration.state import CalibrationState
from calibration.streams import ContentStreamPolicy, choose_content_policy, frame_votes, policy_metrics, scored_streams
from core.hydra_app import show_metrics
from datamodules.cache import materialise
from datamodules.synthetic.streams import SyntheticContentStreams, assign_stream_splits, check_stream_ids_disjoint
from export.parity import placed_on, reference_outputs
from models.predict import predict
from models.resize import Framing
from tracking.mlflow_run import append_description, log_metrics, run_link, stage_run
from tracking.runs import resolve_trained_run

STATE_FILE = "calibration_state.json"


def fit_ood(datamodule, framing: Framing) -> OODCalibration:
    """The abstain score, fitted on the calib split (like every calibrator) and its abstention measured on test."""
    images = datamodule.load().images
    calib, test = (images[datamodule.split_manifest(split).index.to_numpy()] for split in ("calib", "test"))
    return OODCalibration.fit(calib, framing, test)


def fit_stream_policy(
    cfg: DictConfig, trained, model, state: CalibrationState
) -> tuple[ContentStreamPolicy | None, str]:
    """The certified stream policy on synthetic streams like the training data, or None and the reason in words."""
    settings = cfg.calibration.streams
    generator = trained.config.data.get("generator")
    if not settings.enabled or generator is None:
        why = "the model's data has no streams" if settings.enabled else "calibration.streams.enabled=false"
        return None, f"no stream policy was certified ({why}); the runtime applies the fixed export.smoothing"
    if trained.task != "content":
        return None, "age streams are measured but no age stream policy is certified yet; the fixed export.smoothing"
    content = settings.content
    streams = SyntheticContentStreams(
        seed=int(settings.seed),
        classes=tuple(model.hparams.classes),
        num_streams=int(content.num_streams),
        frame_rate_hz=float(settings.frame_rate_hz),
        stream_seconds=float(content.stream_seconds),
        event_share=float(content.event_share),
        event_seconds=tuple(float(s) for s in content.event_seconds),
        image_size=int(generator.image_size),
    )
    fractions, seed = dict(settings.split_fractions), int(settings.seed)
    workers = int(trained.config.data.get("render_workers", 1))
    dataset = materialise(streams, cfg.paths.cache_dir, fractions, seed, workers, assign_stream_splits)
    check_stream_ids_disjoint(dataset.manifest)
    outputs = reference_outputs(model, state, np.asarray(dataset.images), state.interval_coverage(None), cfg.device)
    scored = scored_streams(dataset.manifest, frame_votes(outputs, state, str(content.decision)))
    policy = choose_content_policy(scored["calib"], scored["test"], content, streams.frame_rate_hz, state.confidence)
    return policy, ""


def calibrate(cfg: DictConfig) -> dict[str, float]:
    output_dir = Path(cfg.paths.output_dir)
    trained = resolve_trained_run(cfg.run_id, cfg.checkpoint, output_dir / "source", cfg.expected_task, cfg.train_task)
    model = trained.load_model()
    datamodule = trained.datamodule()
    with placed_on(model, cfg.device):  # the network only: the calibrators fit on CPU outputs
        calib, test = predict(model, datamodule.dataset("calib")), predict(model, datamodule.dataset("test"))

    figures_dir = output_dir / "figures"
    settings, manifest = cfg.calibration, datamodule.load().manifest
    with stage_run("calibrate", trained.run_id, trained.task, trained.experiment) as (client, run_id):
        if trained.task == "content":
            result = calibrate_content(calib, test, manifest, list(model.hparams.classes), settings, figures_dir)
        else:
            result = calibrate_age(model, calib, test, manifest, settings, figures_dir)
        state = CalibrationState(
            task=trained.task,
            train_run_id=trained.run_id,
            checkpoint=str(trained.checkpoint),
            confidence=settings.confidence,
            content=result.content,
            age=result.age,
            operating_points=result.operating_points,
            max_false_alarm_rate=settings.max_false_alarm_rate,
            ood=fit_ood(datamodule, model.framing),
        )
        state.stream, state.stream_reason = fit_stream_policy(cfg, trained, model, state)
        if state.stream is not None:
            result.metrics |= policy_metrics(state.stream)
        result.metrics |= {
            f"{split}/{trained.task}/ood_abstention_rate": getattr(state.ood, f"{split}_abstention_rate")
            for split in ("calib", "test")
        }
        state_path = state.save(output_dir / STATE_FILE)
        table = output_dir / "operating_points.json"
        table.write_text(json.dumps([asdict(p) for p in result.operating_points], indent=2, allow_nan=False))
        log_metrics(client, run_id, result.metrics)
        client.log_artifact(run_id, str(state_path), "calibration")
        client.log_artifact(run_id, str(table), "calibration")
        for figure in result.figures:
            client.log_artifact(run_id, str(figure), "figures")
        if trained.run_id:
            certified = sum(p.miss_rate_upper_bound <= p.target_max_miss_rate for p in state.operating_points)
            line = f"{certified} of {len(state.operating_points)} operating points certified on calib"
            append_description(client, trained.run_id, f"- calibrate: [run]({run_link(client, run_id)}), {line}")
    show_metrics(
        result.metrics,
        f"calibration of {trained.task}",
        {
            "calibration state": str(state_path),
            "mlflow run": run_id,
            "trained run": trained.run_id or "-",
        },
    )
    return result.metrics
