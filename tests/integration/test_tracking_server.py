"""A smoke run tracked on a real `make mlflow-server`, read back over its REST API."""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request

import pytest
from helpers import REPO, cli_train, mlflow_server
from mlflow import MlflowClient


@pytest.mark.slow
@pytest.mark.ci
def test_smoke_run_is_recorded_on_a_tracking_server_and_read_back_over_rest(tmp_path, shared_cache):
    with mlflow_server(tmp_path) as server:
        command = cli_train(tmp_path / "outputs", shared_cache, "experiment=age_synthetic", "test=false")
        env = os.environ | {"MLFLOW_TRACKING_URI": server.url, "COLUMNS": "120"}
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-3000:]

        client = MlflowClient(server.url)
        experiment = client.get_experiment_by_name("childsafe-age_synthetic")
        assert experiment is not None
        assert experiment.artifact_location.startswith("mlflow-artifacts:")  # artefacts go through the server
        (run,) = client.search_runs(experiment.experiment_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["trainer.max_epochs"] == "1"
        assert "val/age/mae" in run.data.metrics
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "config")}
        assert artifacts == {"config/config_resolved.yaml"}
    assert (tmp_path / "server" / "artifacts").is_dir()  # the server, not the client, wrote them
    with pytest.raises(urllib.error.URLError):  # stopped: nothing answers on its port any more
        urllib.request.urlopen(f"{server.url}/health", timeout=2)
