"""Find a trained model from an MLflow run id or a checkpoint path, with the config it was trained with."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from tracking.errors import WorkbenchError
from tracking.mlflow_run import default_tracking_uri

RUN_RECORD = "mlflow_run.json"
CONFIG_ARTIFACT = "config/config_resolved.yaml"


@dataclass(frozen=True)
class TrainedRun:
    run_id: str | None
    checkpoint: Path
    config: DictConfig

    @property
    def task(self) -> str:
        return get_class(self.config.model._target_).task

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
    config = run_dir / "config_resolved.yaml"
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
    return latest_run(
        "train",
        f"tags.task = '{train_task}'",
        f"Train one first (`childsafe train experiment={train_task}`) or pass run_id=<id>.",
    )


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
