"""Hydra callbacks that prepare MLflow for a sweep (configs/hydra/default.yaml names them)."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tracking.mlflow_run import default_tracking_uri, ensure_experiment


class CreateTrackingStore(Callback):
    """Create the MLflow store and the sweep's experiment once, in the launching process, before any job starts.

    Parallel jobs against a fresh SQLite store would otherwise all race to run its migrations.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        experiment = OmegaConf.select(config, "logger.mlflow.experiment_name")
        if experiment:
            ensure_experiment(default_tracking_uri(), experiment)
