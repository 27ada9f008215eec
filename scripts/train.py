"""Train one model and record it in MLflow: `childsafe train experiment=age_synthetic`.

Plain on purpose (torchvision-references style): build data, model, callbacks, logger and trainer
from the config, fit, test the best checkpoint, and log what a reviewer needs to trust the run.
"""

from __future__ import annotations

import errno
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import yaml
from hydra.utils import instantiate
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from datamodules.ingest import IngestRefused
from models.guards import InterruptionCheckpoint
from scripts.hydra_app import console, run_stage, show_metrics, sweep_tags
from tracking.errors import WorkbenchError
from tracking.mlflow_run import (
    check_tracking_uri,
    default_tracking_uri,
    ensure_experiment,
    flatten,
    log_dataset_inputs,
    origin_tags,
)
from tracking.runs import RUN_RECORD

DATA_CONTEXTS = {"train": "training", "val": "validation", "calib": "calibration", "test": "testing"}


@dataclass(frozen=True)
class ResumePoint:
    checkpoint: Path
    mlflow_run_id: str | None


def find_resume_point(cfg: DictConfig) -> ResumePoint | None:
    """`ckpt_path=last` means the newest `last.ckpt` of this task; the run record next to it names its MLflow run."""
    if cfg.ckpt_path is None:
        return None
    if cfg.ckpt_path == "last":
        runs = Path(cfg.paths.log_dir) / cfg.task_name / "runs"
        candidates = sorted(runs.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise WorkbenchError(
                f"ckpt_path=last: no checkpoint of task '{cfg.task_name}' under {runs}. "
                "Start a fresh run (ckpt_path=null) or give a checkpoint path."
            )
        checkpoint = candidates[-1]
    else:
        checkpoint = Path(cfg.ckpt_path)
        if not checkpoint.is_file():
            raise WorkbenchError(f"ckpt_path={checkpoint} does not exist. Give a .ckpt file, `last`, or null.")
    record = checkpoint.parent.parent / RUN_RECORD
    run_id = json.loads(record.read_text())["run_id"] if record.exists() else None
    return ResumePoint(checkpoint, run_id)


def build_logger(cfg: DictConfig, resume: ResumePoint | None) -> MLFlowLogger | None:
    if "mlflow" not in (cfg.get("logger") or {}):
        return None
    uri = default_tracking_uri()
    check_tracking_uri(uri)
    ensure_experiment(uri, cfg.logger.mlflow.experiment_name)  # the logger then finds it, never races to create it
    return instantiate(
        cfg.logger.mlflow,
        tracking_uri=uri,
        run_id=resume.mlflow_run_id if resume else None,
        tags=origin_tags() | {"task": cfg.task_name, "stage": "train"} | sweep_tags(),
    )


def record_origin(logger: MLFlowLogger, cfg: DictConfig, datamodule, output_dir: Path) -> None:
    """Config, params, data lineage, the data's own floor and a preview: logged before any training."""
    client, run_id = logger.experiment, logger.run_id
    resolved = OmegaConf.to_container(cfg, resolve=True)
    config_file = output_dir / "config_resolved.yaml"
    config_file.write_text(yaml.safe_dump(resolved, sort_keys=False))
    client.log_artifact(run_id, str(config_file), "config")
    logger.log_hyperparams(flatten(resolved))
    cached = datamodule.load()
    client.set_tag(run_id, "data.digest", cached.digest)
    client.set_tag(run_id, "data.licence", datamodule.licence)
    client.set_tag(run_id, "data.name", datamodule.dataset_name)
    datamodule.log_provenance(client, run_id)
    log_dataset_inputs(
        client,
        run_id,
        cached.manifest,
        cached.manifest_path,
        datamodule.dataset_name,
        cached.digest,
        datamodule.target,
        DATA_CONTEXTS,
    )
    logger.log_metrics(datamodule.data_metrics())
    client.log_artifact(run_id, str(datamodule.save_preview(output_dir / "preview.png")), "data")
    client.log_artifact(run_id, str(cached.manifest_path), "data")  # the file whose sha256 is the contract's data.digest


def record_refusal(logger: MLFlowLogger | None, refusal: IngestRefused) -> None:
    """Data refused at ingest still leaves a FAILED run holding the quarantine report, for the reviewers."""
    if logger is None or rank_zero_only.rank != 0:
        return
    client, run_id = logger.experiment, logger.run_id
    for report in sorted(refusal.report_dir.iterdir()):
        client.log_artifact(run_id, str(report), "data/refused")
    client.set_tag(run_id, "failure", f"IngestRefused: {refusal}"[:5000])
    client.set_terminated(run_id, "FAILED")


def record_interruption(trainer: L.Trainer, logger: MLFlowLogger | None, error: BaseException) -> None:
    """Pre-emption or Ctrl-C ends the MLflow run KILLED with its reason; a crash ends it FAILED with a summary."""
    if logger is None:
        return
    reasons = [c.reason for c in trainer.callbacks if isinstance(c, InterruptionCheckpoint) and c.reason]
    client, run_id = logger.experiment, logger.run_id
    if reasons:
        client.set_tag(run_id, "killed.reason", reasons[0])
        client.set_terminated(run_id, "KILLED")
    else:
        client.set_tag(run_id, "failure", f"{type(error).__name__}: {error}"[:5000])
        client.set_terminated(run_id, "FAILED")


def train(cfg: DictConfig) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    resume = find_resume_point(cfg)
    logger = build_logger(cfg, resume)

    datamodule = instantiate(cfg.data)
    try:
        datamodule.prepare_data()
    except IngestRefused as refusal:
        record_refusal(logger, refusal)
        raise
    model = instantiate(cfg.model)
    if resume is not None and cfg.callbacks.get("model_checkpoint"):
        # Keep checkpointing where the interrupted run did, so its best score and paths carry over.
        with open_dict(cfg):
            cfg.callbacks.model_checkpoint.dirpath = str(resume.checkpoint.parent)
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values() if callback is not None]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger or False)
    # Every DDP rank trains and syncs its metrics, but only global rank zero records the run, as Lightning's logger.
    tracker = logger if trainer.is_global_zero else None

    if tracker is not None:
        (output_dir / RUN_RECORD).write_text(
            json.dumps({"run_id": logger.run_id, "tracking_uri": default_tracking_uri()})
        )
        if resume is None:
            record_origin(logger, cfg, datamodule, output_dir)

    started = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(resume.checkpoint) if resume else None)
    except BaseException as error:
        record_interruption(trainer, tracker, error)
        if isinstance(error, SIGTERMException):  # a SystemExit without a code would exit 0
            raise SystemExit(128 + signal.SIGTERM) from error
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            folder = Path(error.filename2 or error.filename or output_dir).parent
            raise WorkbenchError(
                f"The disk holding {folder} is full, so the run stopped (MLflow status FAILED). Free space there "
                "or point paths.log_dir at a larger disk, then resume with ckpt_path=last."
            ) from error
        raise
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    metrics[f"train/{model.task}/fit_seconds"] = time.perf_counter() - started
    if cfg.test:
        trainer.test(model, datamodule=datamodule, ckpt_path="best")
        metrics |= {name: float(value) for name, value in trainer.callback_metrics.items()}
        metrics |= datamodule.baseline_metrics("test")
    metrics |= datamodule.data_metrics()

    best = trainer.checkpoint_callback.best_model_path
    if tracker is not None:
        logger.log_metrics({k: v for k, v in metrics.items() if k.startswith(("test/", "data/", "train/"))})
        if best:
            logger.experiment.log_artifact(logger.run_id, best, "checkpoints")
        logger.experiment.set_terminated(logger.run_id, "FINISHED")
    show_metrics(
        metrics,
        title=f"{cfg.task_name}: results",
        notes={
            "output folder": str(output_dir),
            "best checkpoint": best or "-",
            "mlflow run": logger.run_id if logger else "not tracked (logger=none)",
        },
    )
    if tracker is not None and tracker.experiment.in_outage:
        console.print(
            f"[yellow]The tracking server went away during the run: {tracker.experiment.spooled} MLflow calls "
            f"are spooled in {tracker.experiment.spool_dir}. Once the server is back, run `childsafe sync` "
            "to complete the run in MLflow."
        )
    return metrics


def objective(cfg: DictConfig) -> float | dict[str, float]:
    """Train; under a sweep, hand the optimiser the one number named by `optimized_metric`."""
    metrics = train(cfg)
    name = cfg.get("optimized_metric")
    if name is None:
        return metrics
    if name not in metrics:
        raise WorkbenchError(f"optimized_metric={name} was not measured. Measured: {', '.join(sorted(metrics))}.")
    return metrics[name]


def main() -> None:
    run_stage("train", objective)


if __name__ == "__main__":
    main()
