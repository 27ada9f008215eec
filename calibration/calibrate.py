"""Calibrate a trained model on its calib split: `childsafe calibrate train_task=age_synthetic`.

Reads the training run (MLflow run id, `latest`, or a checkpoint), fits the calibrators and the
operating points on the calib split only, measures them on calib and test, and logs the state,
figures and metrics to an MLflow run nested under the training run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from calibration.age_streams import age_policy_metrics, age_stream_metrics, fit_age_policy, measure_age_streams
from calibration.fit import calibrate_age, calibrate_content
from calibration.ood import OODCalibration
from calibration.state import CalibrationState
from calibration.streams import choose_content_policy, frame_votes, policy_metrics, scored_streams
from core.errors import WorkbenchError
from core.hydra_app import show_metrics
from datamodules.cache import materialise
from datamodules.synthetic.streams import (
    SyntheticAgeStreams,
    SyntheticContentStreams,
    assign_stream_splits,
    check_stream_ids_disjoint,
)
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


def stream_generator(cfg: DictConfig, trained, model):
    """Synthetic streams drawn like the model's training data (size, framing, classes or age prior)."""
    settings, data = cfg.calibration.streams, trained.config.data.generator
    common = {
        "seed": int(settings.seed),
        "frame_rate_hz": float(settings.frame_rate_hz),
        "image_size": int(data.image_size),
    }
    if trained.task == "content":
        content = settings.content
        return SyntheticContentStreams(
            classes=tuple(model.hparams.classes),
            num_streams=int(content.num_streams),
            stream_seconds=float(content.stream_seconds),
            event_share=float(content.event_share),
            event_seconds=tuple(float(s) for s in content.event_seconds),
            **common,
        )
    generator = instantiate(data)  # its age prior and apparent-age noise, as trained on
    return SyntheticAgeStreams(
        num_streams=int(settings.age.num_streams),
        frames_per_stream=int(settings.age.frames_per_stream),
        margin=generator.margin,
        prior=generator.prior,
        noise=generator.noise,
        **common,
    )


def fit_streams(cfg: DictConfig, trained, model, state: CalibrationState) -> CalibrationState:
    """The state with its stream figures: the certified content policy, or the age measurement; else the reason."""
    settings = cfg.calibration.streams
    if not settings.enabled or trained.config.data.get("generator") is None:
        why = "the model's data has no streams" if settings.enabled else "calibration.streams.enabled=false"
        return replace(state, stream_reason=f"no stream figures were measured ({why})")
    streams = stream_generator(cfg, trained, model)
    fractions, seed = dict(settings.split_fractions), int(settings.seed)
    workers = int(trained.config.data.get("render_workers", 1))
    dataset = materialise(streams, cfg.paths.cache_dir, fractions, seed, workers, assign_stream_splits)
    check_stream_ids_disjoint(dataset.manifest)
    outputs = reference_outputs(model, state, np.asarray(dataset.images), state.interval_coverage(None), cfg.device)
    if trained.task == "age":
        figures = measure_age_streams(
            dataset.manifest,
            outputs,
            state,
            streams.frame_rate_hz,
            streams.frames_per_stream,
            float(cfg.calibration.age.max_minor_pass_rate),
        )
        try:
            policy = fit_age_policy(dataset.manifest, outputs, state, settings.age, streams.frame_rate_hz)
        except WorkbenchError as refusal:  # too few calib minors: the runtime keeps the per-frame k-of-n
            return replace(state, age_stream=figures, stream_reason=str(refusal))
        return replace(state, age_stream=figures, age_policy=policy)
    content = settings.content
    scored = scored_streams(dataset.manifest, frame_votes(outputs, state, str(content.decision)))
    policy = choose_content_policy(scored["calib"], scored["test"], content, streams.frame_rate_hz, state.confidence)
    return replace(state, stream=policy)


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
        state = fit_streams(cfg, trained, model, state)
        if state.stream is not None:
            result.metrics |= policy_metrics(state.stream)
        if state.age_stream is not None:
            result.metrics |= age_stream_metrics(state.age_stream)
        if state.age_policy is not None:
            result.metrics |= age_policy_metrics(state.age_policy)
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
