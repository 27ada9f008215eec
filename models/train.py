"""Train one model and record it in MLflow: `childsafe train experiment=age_synthetic`.

Plain on purpose (torchvision-references style): build data, model, callbacks, logger and trainer
from the config, fit, test the best checkpoint, and log what a reviewer needs to trust the run.
"""

from __future__ import annotations

import errno
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import yaml
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from core.errors import WorkbenchError
from core.hydra_app import console, show_metrics, sweep_tags
from datamodules.ingest import IngestRefused
from models.guards import InterruptionCheckpoint
from tracking.mlflow_run import (
    check_tracking_uri,
    default_tracking_uri,
    ensure_experiment,
    flatten,
    log_dataset_inputs,
    origin_tags,
)
from tracking.runs import RUN_CONFIG, RunRecord, TrainRunState, config_changes, newest_interrupted_run

DATA_CONTEXTS = {"train": "training", "val": "validation", "calib": "calibration", "test": "testing"}


@dataclass(frozen=True)
class ResumePoint:
    """Where training restarts: a checkpoint, and the interrupted run it continues in place (None: a new run)."""

    checkpoint: Path
    run: TrainRunState | None
    config_changes: dict[str, tuple]

    @property
    def run_dir(self) -> Path | None:
        return self.run.folder if self.run else None


def _config_refusal(run: TrainRunState, changes: dict[str, tuple]) -> str:
    listed = "; ".join(f"{key}: {before} -> {after}" for key, before, after in ((k, *v) for k, v in changes.items()))
    return (
        f"ckpt_path=last: the interrupted run {run.describe()} was trained with a different config, so resuming "
        f"it would match neither config's result. Differing keys: {listed}. Resume it with its own values (drop "
        "those overrides); or add resume.allow_config_change=true to resume it in place with the new ones (the "
        f"MLflow run is then tagged resume.config_changed); or pass ckpt_path={run.checkpoint} to continue "
        "from its state in a new MLflow run."
    )


def find_resume_point(cfg: DictConfig) -> ResumePoint | None:
    """`ckpt_path=last`: the newest interrupted run of this task, in place, if its config is this one.

    An explicit checkpoint path starts a new run (its own folder and MLflow run) from that state, so
    the run the checkpoint came from, finished or not, is never written to.
    """
    if cfg.ckpt_path is None:
        return None
    if cfg.ckpt_path != "last":
        checkpoint = Path(cfg.ckpt_path)
        if not checkpoint.is_file():
            raise WorkbenchError(f"ckpt_path={checkpoint} does not exist. Give a .ckpt file, `last`, or null.")
        return ResumePoint(checkpoint, None, {})
    runs, output_dir = Path(cfg.paths.log_dir) / cfg.task_name / "runs", Path(cfg.paths.output_dir)
    chosen = None if output_dir.parent == runs else output_dir  # a run folder named with paths.output_dir
    run = newest_interrupted_run(runs, cfg.task_name, cfg.resume.stale_after_s, chosen)
    if run.tracking_uri and run.tracking_uri != default_tracking_uri():
        raise WorkbenchError(
            f"ckpt_path=last: the interrupted run {run.describe()} is tracked in {run.tracking_uri}, but "
            f"MLFLOW_TRACKING_URI is now {default_tracking_uri()}. Set MLFLOW_TRACKING_URI={run.tracking_uri} to "
            f"resume it in place, or pass ckpt_path={run.checkpoint} to continue from it in a new run."
        )
    saved = run.folder / RUN_CONFIG
    if not saved.exists():
        raise WorkbenchError(
            f"ckpt_path=last: the interrupted run {run.describe()} has no {RUN_CONFIG}, so whether it was trained "
            f"with this config is unknown. Pass ckpt_path={run.checkpoint} to continue from it in a new run."
        )
    changes = config_changes(
        yaml.safe_load(saved.read_text()), OmegaConf.to_container(cfg, resolve=True), cfg.resume.unchecked_keys
    )
    if changes and not cfg.resume.allow_config_change:
        raise WorkbenchError(_config_refusal(run, changes))
    return ResumePoint(run.checkpoint, run, changes)


def build_logger(cfg: DictConfig, resume: ResumePoint | None) -> MLFlowLogger | None:
    if "mlflow" not in (cfg.get("logger") or {}):
        return None
    uri = default_tracking_uri()
    check_tracking_uri(uri)
    ensure_experiment(uri, cfg.logger.mlflow.experiment_name)  # the logger then finds it, never races to create it
    # `task` is age or content on every stage's run; `experiment` names the training experiment.
    tags = origin_tags() | {"task": get_class(cfg.model._target_).task, "experiment": cfg.task_name, "stage": "train"}
    tags |= sweep_tags()
    if resume is not None and resume.run is None:
        tags["resumed_from.checkpoint"] = str(resume.checkpoint)
    logger = instantiate(
        cfg.logger.mlflow, tracking_uri=uri, run_id=resume.run.run_id if resume and resume.run else None, tags=tags
    )
    if resume is not None and resume.run is not None and resume.run.run_id:
        # Back to RUNNING (with a fresh heartbeat), so no other `ckpt_path=last` takes it while it trains.
        logger.experiment.update_run(resume.run.run_id, status="RUNNING")
        if resume.config_changes:
            logger.experiment.set_tag(resume.run.run_id, "resume.config_changed", ", ".join(resume.config_changes))
    return logger


def write_config(cfg: DictConfig, run_dir: Path) -> Path:
    """The resolved config beside the checkpoints: what a later `ckpt_path=last` compares itself with."""
    config_file = run_dir / RUN_CONFIG
    config_file.write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True), sort_keys=False))
    return config_file


def record_origin(logger: MLFlowLogger, cfg: DictConfig, datamodule, output_dir: Path) -> None:
    """Config, params, data lineage, the data's own floor and a preview: logged before any training."""
    client, run_id = logger.experiment, logger.run_id
    client.log_artifact(run_id, str(output_dir / RUN_CONFIG), "config")
    logger.log_hyperparams(flatten(OmegaConf.to_container(cfg, resolve=True)))
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
    # The file whose sha256 is the contract's data.digest.
    client.log_artifact(run_id, str(cached.manifest_path), "data")


def record_refusal(logger: MLFlowLogger | None, refusal: IngestRefused) -> None:
    """Data refused at ingest still leaves a FAILED run holding the quarantine report, for the reviewers."""
    if logger is None or rank_zero_only.rank != 0:
        return
    client, run_id = logger.experiment, logger.run_id
    for report in sorted(refusal.report_dir.iterdir()):
        client.log_artifact(run_id, str(report), "data/refused")
    client.set_tag(run_id, "failure", f"IngestRefused: {refusal}"[:5000])
    client.set_terminated(run_id, "FAILED")


def interruption_reason(trainer: L.Trainer, error: BaseException | None) -> str | None:
    """Why a run was stopped from outside (Ctrl-C, SIGTERM), or None for a crash."""
    reasons = [c.reason for c in trainer.callbacks if isinstance(c, InterruptionCheckpoint) and c.reason]
    if reasons:
        return reasons[0]
    if isinstance(error, KeyboardInterrupt):
        return InterruptionCheckpoint.SIGINT_REASON
    if isinstance(error, SIGTERMException):
        return InterruptionCheckpoint.SIGTERM_REASON
    return None


def record_interruption(record: RunRecord | None, logger: MLFlowLogger | None, reason: str | None, error) -> None:
    """Pre-emption or Ctrl-C ends the run KILLED with its reason; a crash ends it FAILED with a summary.

    Only ever this stage's own run: one that is FINISHED is never resumed in place, so never reaches here.
    """
    status = "KILLED" if reason else "FAILED"
    if record is not None:
        record.update(status=status)
    if logger is None:
        return
    client, run_id = logger.experiment, logger.run_id
    if reason:
        client.set_tag(run_id, "killed.reason", reason)
    else:
        client.set_tag(run_id, "failure", f"{type(error).__name__}: {error}"[:5000])
    client.set_terminated(run_id, status)


def stopped(error: BaseException, reason: str | None, output_dir: Path) -> BaseException:
    """What the CLI raises for a stopped run: 128 + the signal's number after a signal, a named full disk."""
    if reason:
        signum = signal.SIGINT if reason == InterruptionCheckpoint.SIGINT_REASON else signal.SIGTERM
        return SystemExit(128 + signum)  # Lightning's own exits (1, or a SystemExit without a code) would hide it
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        folder = Path(error.filename2 or error.filename or output_dir).parent
        return WorkbenchError(
            f"The disk holding {folder} is full, so the run stopped (MLflow status FAILED). Free space there "
            "or point paths.log_dir at a larger disk, then resume with ckpt_path=last."
        )
    return error


def fit_and_test(
    cfg: DictConfig, trainer: L.Trainer, model, datamodule, resume: ResumePoint | None
) -> tuple[dict[str, float], dict[str, float]]:
    """Fit (from the resume point, if any), then test the best checkpoint.

    Returns every metric, and those Lightning did not log itself (the fit time, the baseline and
    the data's figures): only these are logged afterwards, so no key is logged twice.
    """
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=str(resume.checkpoint) if resume else None)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    if interruption_reason(trainer, None):
        raise KeyboardInterrupt  # a Ctrl-C after the last training step (in the last validation): stop, untested
    unlogged = {f"train/{model.task}/fit_seconds": time.perf_counter() - started}
    if cfg.test:
        trainer.test(model, datamodule=datamodule, ckpt_path="best")
        metrics |= {name: float(value) for name, value in trainer.callback_metrics.items()}
        unlogged |= datamodule.baseline_metrics("test")
    unlogged |= datamodule.data_metrics()
    return metrics | unlogged, unlogged


def train(cfg: DictConfig) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    resume = find_resume_point(cfg)
    # The run folder holds the checkpoints, the config and the run record: the interrupted run's when
    # resuming it in place, so its best score and paths carry over; else this run's output folder.
    run_dir = resume.run_dir if resume and resume.run_dir else output_dir
    logger = build_logger(cfg, resume)
    with open_dict(cfg):
        if cfg.callbacks.get("model_checkpoint"):
            cfg.callbacks.model_checkpoint.dirpath = str(run_dir / "checkpoints")
        if cfg.callbacks.get("heartbeat"):
            cfg.callbacks.heartbeat.run_dir = str(run_dir)
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values() if callback is not None]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger or False)
    # Every DDP rank trains and syncs its metrics, but only global rank zero records the run, as Lightning's logger.
    tracker = logger if trainer.is_global_zero else None
    record = RunRecord(run_dir) if trainer.is_global_zero else None

    if record is not None:
        run_id = logger.run_id if logger else None
        uri = default_tracking_uri() if logger else None
        record.update(run_id=run_id, tracking_uri=uri, status="RUNNING", heartbeat=time.time())
        if run_dir != output_dir:  # this invocation's folder says which run it continued
            RunRecord(output_dir).update(run_id=run_id, resumed_run_dir=str(run_dir))
        if resume is None or resume.run is None or resume.config_changes:
            write_config(cfg, run_dir)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    if model.framing != datamodule.framing:
        raise WorkbenchError(
            f"The model frames {model.framing.cache_size} px around a {model.framing.input_size} px input, but the "
            f"data is cached at {datamodule.framing.cache_size} px for a {datamodule.framing.input_size} px input. "
            "Set the sizes on the data (data.image_size or data.generator.image_size, and data.input_size): "
            "model.image_size and model.cache_size follow them."
        )
    try:
        datamodule.prepare_data()
        if tracker is not None and (resume is None or resume.run is None):
            record_origin(logger, cfg, datamodule, run_dir)
        elif tracker is not None and resume.config_changes:
            tracker.experiment.log_artifact(logger.run_id, str(run_dir / RUN_CONFIG), "config")
        metrics, unlogged = fit_and_test(cfg, trainer, model, datamodule, resume)
    except IngestRefused as refusal:
        record_refusal(tracker, refusal)
        if record is not None:
            record.update(status="FAILED")
        raise
    except BaseException as error:
        reason = interruption_reason(trainer, error)
        record_interruption(record, tracker, reason, error)
        replacement = stopped(error, reason, output_dir)
        if replacement is error:
            raise
        raise replacement from error

    best = trainer.checkpoint_callback.best_model_path
    if tracker is not None:
        logger.log_metrics(unlogged, step=trainer.global_step)  # at the last step, never again at step 0
        if best:
            logger.experiment.log_artifact(logger.run_id, best, "checkpoints")
        logger.experiment.set_terminated(logger.run_id, "FINISHED")
    if record is not None:
        record.update(status="FINISHED")
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
