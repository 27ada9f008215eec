"""Lightning's MLflow logger writing through a `SpoolingClient` (tracking/spool.py), for the train stage."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger

from tracking.spool import SPOOL_DIR, SpoolingClient


class SpoolingMLFlowLogger(MLFlowLogger):
    """Lightning's MLflow logger over a `SpoolingClient`; the train stage, not the logger, ends the run."""

    def __init__(self, *args: Any, run_dir: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.spool_dir = Path(run_dir) / SPOOL_DIR
        # MLflow retries a refused request for minutes by default; give up in seconds and spool instead.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

    @property
    def experiment(self) -> SpoolingClient:
        client = super().experiment
        if not isinstance(client, SpoolingClient):
            client = self._mlflow_client = SpoolingClient(client, self._tracking_uri, self.spool_dir)
        return client

    def finalize(self, status: str = "success") -> None:
        """A no-op: train.py sets FINISHED, FAILED or KILLED itself, after testing, and spools it in an outage."""
