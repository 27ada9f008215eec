"""Find a trained model from an MLflow run id or a checkpoint path, with the config it was trained with;
and tell an interrupted train run (the only kind `ckpt_path=last` resumes) from a finished or a live one."""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from core.errors import WorkbenchError
from tracking.mlflow_run import default_tracking_uri, flatten

RUN_RECORD = "mlflow_run.json"
RUN_CONFIG = "config_resolved.yaml"
CONFIG_ARTIFACT = f"config/{RUN_CONFIG}"
HEARTBEAT_TAG = "heartbeat"
INTERRUPTED = ("KILLED", "FAILED")


@dataclass(frozen=True)
class RunRecord:
    """`<run folder>/mlflow_run.json`: the MLflow run a train run folder is, its status and its last heartbeat.

    Kept on the local disk beside the checkpoints, and updated with the MLflow run, so a run's state
    can be read with logger=none and while a tracking server is away (its writes then only spooled).
    """

    folder: Path

    @property
    def path(self) -> Path:
        return self.folder / RUN_RECORD

    def read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def update(self, **fields: Any) -> None:
        """Merge `fields` in; written to a temporary file and renamed, so a kill never leaves half a record."""
        staging = self.path.with_name(f".{RUN_RECORD}.partial")
        staging.write_text(json.dumps(self.read() | fields))
        os.replace(staging, self.path)


class Heartbeat(L.Callback):
    """Stamps the run record and the MLflow run (tag `heartbeat`, Unix seconds) at most every `interval_s`.

    A SIGKILL or a power cut leaves the MLflow run RUNNING for ever; a heartbeat older than
    `resume.stale_after_s` is how `ckpt_path=last` tells such a run from one still training.
    """

    def __init__(self, run_dir: str, interval_s: float = 30.0):
        self.record, self.interval_s = RunRecord(Path(run_dir)), interval_s
        self._last = float("-inf")

    def beat(self, trainer: L.Trainer, force: bool = False) -> None:
        now = time.time()
        if not trainer.is_global_zero or (not force and now - self._last < self.interval_s):
            return
        self._last = now
        self.record.update(heartbeat=now)
        logger = trainer.logger
        if logger is not None and hasattr(logger, "run_id") and hasattr(logger.experiment, "set_tag"):
            logger.experiment.set_tag(logger.run_id, HEARTBEAT_TAG, f"{now:.0f}")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.beat(trainer, force=True)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.beat(trainer, force=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.beat(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.beat(trainer)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.beat(trainer)


@dataclass(frozen=True)
class TrainRunState:
    """What the run record and MLflow together say about one train run folder that holds a `last.ckpt`."""

    folder: Path
    run_id: str | None
    tracking_uri: str | None
    status: str  # FINISHED, KILLED, FAILED, RUNNING, or UNKNOWN (no status recorded anywhere)
    heartbeat_age_s: float

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoints" / "last.ckpt"

    def interrupted(self, stale_after_s: float) -> bool:
        """KILLED or FAILED, or RUNNING with no sign of life for `stale_after_s`; never FINISHED."""
        return self.status in INTERRUPTED or (self.status == "RUNNING" and self.heartbeat_age_s > stale_after_s)

    def describe(self) -> str:
        run = f"MLflow run {self.run_id}" if self.run_id else "untracked"
        alive = f", heartbeat {self.heartbeat_age_s:.0f} s ago" if self.status == "RUNNING" else ""
        return f"{self.folder.name} ({run}): {self.status}{alive}"


def train_run_state(folder: Path, now: float | None = None) -> TrainRunState:
    """A finished status in either the record or MLflow wins; otherwise MLflow's status, else the record's.

    The heartbeat is the newest of the record's, the MLflow tag's and `last.ckpt`'s modification
    time (runs written before heartbeats existed have only the last).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    record = RunRecord(folder).read()
    run_id, uri = record.get("run_id"), record.get("tracking_uri")
    statuses = [record.get("status")]
    beats = [record.get("heartbeat"), (folder / "checkpoints" / "last.ckpt").stat().st_mtime]
    if run_id:
        try:
            run = MlflowClient(uri or default_tracking_uri()).get_run(run_id)
        except MlflowException:
            run = None  # the run was deleted from the store: the local record is all there is
        if run is not None:
            statuses.insert(0, run.info.status)
            beats.append(float(run.data.tags.get(HEARTBEAT_TAG, 0)))
    known = [status for status in statuses if status]
    status = "FINISHED" if "FINISHED" in known else (known[0] if known else "UNKNOWN")
    age = (now or time.time()) - max(float(beat) for beat in beats if beat is not None)
    return TrainRunState(folder, run_id, uri, status, age)


def newest_interrupted_run(
    runs_dir: Path, task: str, stale_after_s: float, chosen: Path | None = None
) -> TrainRunState:
    """The run folder of `task` with the newest `last.ckpt` whose run was interrupted; a named error if none.

    `chosen` is a run folder the user named (`paths.output_dir`): it is a candidate beside `runs_dir`'s.
    """
    found_checkpoints = {
        *runs_dir.glob("*/checkpoints/last.ckpt"),
        *(chosen.glob("checkpoints/last.ckpt") if chosen else []),
    }
    checkpoints = sorted(found_checkpoints, key=lambda p: p.stat().st_mtime, reverse=True)
    states = [train_run_state(checkpoint.parent.parent) for checkpoint in checkpoints]
    for state in states:
        if state.interrupted(stale_after_s):
            return state
    found = "; ".join(state.describe() for state in states[:5]) or "no run folder holds checkpoints/last.ckpt"
    live = any(state.status == "RUNNING" for state in states)
    raise WorkbenchError(
        f"ckpt_path=last: there is no interrupted run of task '{task}' to resume under {runs_dir}"
        + (f" or in {chosen}" if chosen else "")
        + f" ({found}). "
        "Only a run that ended KILLED or FAILED, or is RUNNING with no heartbeat for "
        f"resume.stale_after_s={stale_after_s:g} s, is resumed; a finished run is never touched. "
        + (
            "A RUNNING run may still be training; if it was killed, wait until its heartbeat is older than that "
            "or lower resume.stale_after_s. "
            if live
            else ""
        )
        + "Start a fresh run (leave ckpt_path unset), or continue from a checkpoint in a new MLflow run with "
        "ckpt_path=<path to a .ckpt>."
    )


ABSENT = "<absent>"


def config_changes(saved: dict[str, Any], current: dict[str, Any], unchecked: Sequence[str]) -> dict[str, tuple]:
    """Flattened keys whose value differs between two resolved configs, except those under `unchecked`
    (where files go, how the run is shown and tracked: nothing that changes what is computed)."""
    before, after = flatten(saved), flatten(current)

    def checked(key: str) -> bool:
        return not any(key == prefix or key.startswith(f"{prefix}.") for prefix in unchecked)

    keys = sorted(key for key in before.keys() | after.keys() if checked(key))
    return {
        key: (before.get(key, ABSENT), after.get(key, ABSENT))
        for key in keys
        if before.get(key, ABSENT) != after.get(key, ABSENT)
    }


@dataclass(frozen=True)
class TrainedRun:
    run_id: str | None
    checkpoint: Path
    config: DictConfig

    @property
    def task(self) -> str:
        return get_class(self.config.model._target_).task

    @property
    def experiment(self) -> str:
        """The training experiment (its task_name, e.g. age_synthetic), which names and tags every later stage's run."""
        return str(self.config.get("task_name") or self.task)

    def load_model(self):
        """Load the LightningModule with `weights_only=True`: a checkpoint never runs code."""
        module_class = get_class(self.config.model._target_)
        try:
            return module_class.load_from_checkpoint(self.checkpoint, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise WorkbenchError(
                f"checkpoint={self.checkpoint} holds a pickled object outside the safe allow-list (tensors, "
                "numbers, strings, lists and dicts), so it was not loaded: unpickling it could run code. "
                f"Use a checkpoint written by `childsafe train`. Detail: {str(error).splitlines()[-1][:300]}"
            ) from error

    def datamodule(self):
        return instantiate(self.config.data)


def _from_checkpoint(checkpoint: Path) -> TrainedRun:
    if not checkpoint.is_file():
        raise WorkbenchError(f"checkpoint={checkpoint} does not exist. Give a .ckpt written by `childsafe train`.")
    run_dir = checkpoint.parent.parent
    config = run_dir / RUN_CONFIG
    if not config.exists():
        raise WorkbenchError(
            f"checkpoint={checkpoint}: no config_resolved.yaml in its run folder {run_dir}, so the data and model "
            "it was trained with are unknown. Use the run folder written by `childsafe train`, or pass run_id=..."
        )
    record = run_dir / RUN_RECORD
    run_id = json.loads(record.read_text())["run_id"] if record.exists() else None
    return TrainedRun(run_id, checkpoint, OmegaConf.load(config))


def _from_mlflow(run_id: str, download_dir: Path) -> TrainedRun:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = default_tracking_uri()
    client = MlflowClient(uri)
    try:
        client.get_run(run_id)  # existence check: a clear error before any download
    except MlflowException as error:
        raise WorkbenchError(
            f"run_id={run_id}: no such MLflow run in {uri}. List runs with `mlflow ui` or check MLFLOW_TRACKING_URI."
        ) from error
    try:
        config = client.download_artifacts(run_id, CONFIG_ARTIFACT, str(download_dir))
        checkpoints = client.download_artifacts(run_id, "checkpoints", str(download_dir))
    except (MlflowException, OSError) as error:
        raise WorkbenchError(
            f"run_id={run_id} has no {CONFIG_ARTIFACT} or checkpoints/ artefact: it is not a finished "
            "`childsafe train` run."
        ) from error
    ckpts = sorted(Path(checkpoints).glob("*.ckpt"))
    if not ckpts:
        raise WorkbenchError(f"run_id={run_id}: its checkpoints/ artefact holds no .ckpt file.")
    return TrainedRun(run_id, ckpts[0], OmegaConf.load(config))


def latest_run(stage: str, condition: str, hint: str) -> str:
    """The newest FINISHED run of a stage matching an MLflow filter condition."""
    from mlflow import MlflowClient

    client = MlflowClient(default_tracking_uri())
    query = f"tags.stage = '{stage}' and {condition} and attributes.status = 'FINISHED'"
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, query, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise WorkbenchError(f"No finished {stage} run where {condition} in {default_tracking_uri()}. {hint}")
    return runs[0].info.run_id


def latest_train_run(train_task: str) -> str:
    """The newest finished train run of an experiment (runs from before the `experiment` tag carried it in `task`)."""
    hint = f"Train one first (`childsafe train experiment={train_task}`) or pass run_id=<id>."
    try:
        return latest_run("train", f"tags.experiment = '{train_task}'", hint)
    except WorkbenchError:
        return latest_run("train", f"tags.task = '{train_task}'", hint)


def resolve_trained_run(
    run_id: str | None,
    checkpoint: str | None,
    download_dir: Path,
    expected_task: str | None = None,
    train_task: str | None = None,
) -> TrainedRun:
    if checkpoint and run_id == "latest":
        run_id = None  # an explicit checkpoint wins over the default
    if bool(run_id) == bool(checkpoint):
        raise WorkbenchError("Give exactly one of run_id=<MLflow run id | latest> or checkpoint=<path to .ckpt>.")
    if run_id == "latest":
        run_id = latest_train_run(train_task)
    trained = _from_mlflow(run_id, download_dir) if run_id else _from_checkpoint(Path(checkpoint))
    if expected_task and trained.task != expected_task:
        source = f"run_id={run_id}" if run_id else f"checkpoint={checkpoint}"
        raise WorkbenchError(
            f"{source} holds a '{trained.task}' model, but this stage was asked for task={expected_task}. "
            "Pick a run of the right task or change task=."
        )
    return trained
