"""A real tracking server stopped mid-run: training finishes, spools, and `childsafe sync` completes the run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import REPO, cli_train, mlflow_server
from mlflow import MlflowClient


@pytest.mark.slow
@pytest.mark.ci  # a server started twice and a smoke run: about a minute
def test_training_survives_a_server_outage_and_sync_completes_the_run(tmp_path, shared_cache):
    outputs = tmp_path / "outputs"
    with mlflow_server(tmp_path) as server:
        env = os.environ | {"MLFLOW_TRACKING_URI": server.url, "PYTHONPATH": str(REPO / "tests"), "COLUMNS": "120"}
        outage = (
            "+callbacks.outage._target_=helpers.StopServerAtEpoch",
            f"+callbacks.outage.pgid={server.process.pid}",
            "+callbacks.outage.epoch=1",
            f"+callbacks.outage.url={server.url}",
        )
        command = cli_train(outputs, shared_cache, "experiment=age_synthetic", "trainer.max_epochs=3", *outage)
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "childsafe sync" in done.stdout
        (spool,) = outputs.rglob("mlflow-spool")
        assert (spool / "calls.jsonl").read_text().count("\n") >= 3

        server.restart()  # the same port and store
        client = MlflowClient(server.url)
        (run,) = client.search_runs([client.get_experiment_by_name("childsafe-age_synthetic").experiment_id])
        assert run.info.status == "RUNNING"  # the end of the run is still in the spool
        assert "test/age/mae" not in run.data.metrics
        assert len(client.get_metric_history(run.info.run_id, "val/age/mae")) == 1  # epoch 0 only

        synced = subprocess.run(
            [sys.executable, "-m", "scripts.cli", "sync", f"root={outputs}"], cwd=REPO, env=env, capture_output=True
        )
        assert synced.returncode == 0, synced.stderr[-3000:]
        run = client.get_run(run.info.run_id)
        assert run.info.status == "FINISHED"
        assert "test/age/mae" in run.data.metrics
        assert len(client.get_metric_history(run.info.run_id, "val/age/mae")) == 3  # every epoch, in the end
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
        assert not list(outputs.rglob("mlflow-spool")) and list(outputs.rglob("mlflow-spool.synced-*"))

        again = subprocess.run(
            [sys.executable, "-m", "scripts.cli", "sync", f"root={outputs}"], cwd=REPO, env=env, capture_output=True
        )
        assert again.returncode == 0 and b"Nothing to sync" in again.stdout
