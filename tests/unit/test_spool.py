"""The spooling client: spool only when the server is gone, never hide a call that was simply wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from core.errors import WorkbenchError
from tracking.spool import CALLS, SpoolingClient, find_spools, replay


def test_a_wrong_call_to_a_reachable_store_raises_and_spools_nothing(tmp_path, tracking_uri):
    client = SpoolingClient(MlflowClient(tracking_uri), tracking_uri, tmp_path / "spool")
    with pytest.raises(MlflowException):
        client.set_tag("no-such-run", "k", "v")
    assert not client.in_outage and not (tmp_path / "spool").exists()


def test_an_unreachable_server_spools_every_write_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"
    client = SpoolingClient(MlflowClient(uri), uri, tmp_path / "mlflow-spool")
    client.log_batch("run1", metrics=[Metric("val/mae", 3.5, 1000, 2)])
    artefact = tmp_path / "config.yaml"
    artefact.write_text("a: 1")
    client.log_artifact("run1", str(artefact), "config")
    artefact.unlink()  # the spool holds its own copy
    client.set_terminated("run1", "FINISHED")

    calls = [json.loads(line) for line in (tmp_path / "mlflow-spool" / CALLS).read_text().splitlines()]
    assert [c["method"] for c in calls] == ["log_batch", "log_artifact", "set_terminated"]
    assert calls[0]["metrics"] == [{"key": "val/mae", "value": 3.5, "timestamp": 1000, "step": 2}]
    assert (tmp_path / "mlflow-spool" / "artifacts" / "1" / "config.yaml").read_text() == "a: 1"
    assert find_spools(tmp_path) == [tmp_path / "mlflow-spool"]
    with pytest.raises(WorkbenchError, match="not reachable"):
        replay(tmp_path / "mlflow-spool")  # still down: the spool stays for a later sync
    assert find_spools(tmp_path) == [tmp_path / "mlflow-spool"]


def test_sync_starts_without_importing_lightning_or_torch():
    probe = "import sys, scripts.sync; assert not {'lightning', 'torch'} & set(sys.modules), 'heavy import'"
    done = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).parents[2], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
