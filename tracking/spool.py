"""Keep training through a tracking-server outage: what cannot be logged goes to a local spool.

A run's metrics, params, tags, artefacts and final status are written to MLflow as it trains. If
the server goes away mid-run, losing them (or stopping a multi-hour job) are both wrong, so the
client below writes each call it could not deliver to `<run folder>/mlflow-spool/` and keeps going;
`childsafe sync` replays the spool, in order, once the server is back. Lightning's side of it is
in tracking/spool_logger.py, so that `childsafe sync` starts without importing Lightning.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag

from core.errors import WorkbenchError
from tracking.mlflow_run import check_tracking_uri

SPOOL_DIR = "mlflow-spool"
CALLS = "calls.jsonl"
REPLAYED = "replayed"  # how many calls a sync already delivered, so an interrupted sync resumes


def _entities_to_json(metrics=(), params=(), tags=()) -> dict[str, list[dict[str, Any]]]:
    return {
        "metrics": [{"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step} for m in metrics],
        "params": [{"key": p.key, "value": p.value} for p in params],
        "tags": [{"key": t.key, "value": t.value} for t in tags],
    }


class SpoolingClient:
    """An MlflowClient that, once the tracking server stops answering, spools every write instead.

    Writes keep their order: after the first undeliverable call, later ones are spooled too, even
    if the server returns during the run. Reads go straight to the server.
    """

    def __init__(self, client, tracking_uri: str, spool_dir: Path):
        self._client, self._uri, self.spool_dir = client, tracking_uri, spool_dir
        self.in_outage = False
        self.spooled = 0

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    def _send(self, method: str, run_id: str, *args: Any, **kwargs: Any) -> bool:
        """True once delivered; False when the server is gone (this and every later write is then spooled)."""
        if self.in_outage:
            return False
        try:
            getattr(self._client, method)(run_id, *args, **kwargs)
            return True
        except Exception:
            try:
                check_tracking_uri(self._uri, timeout_s=2.0)
            except WorkbenchError:
                self.in_outage = True
                return False
            raise  # the server answers, so the call itself was wrong

    def _spool(self, call: dict[str, Any]) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        (self.spool_dir / "tracking_uri").write_text(self._uri)
        with (self.spool_dir / CALLS).open("a") as handle:
            handle.write(json.dumps(call) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.spooled += 1

    def log_batch(self, run_id: str, metrics=(), params=(), tags=(), **_: Any) -> None:
        metrics, params, tags = list(metrics), list(params), list(tags)
        if not self._send("log_batch", run_id, metrics=metrics, params=params, tags=tags):
            self._spool({"method": "log_batch", "run_id": run_id, **_entities_to_json(metrics, params, tags)})

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        if not self._send("set_tag", run_id, key, value):
            self._spool({"method": "set_tag", "run_id": run_id, "key": key, "value": str(value)})

    def set_terminated(self, run_id: str, status: str | None = None) -> None:
        if not self._send("set_terminated", run_id, status):
            self._spool({"method": "set_terminated", "run_id": run_id, "status": status})

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        """A spooled artefact is copied, so the spool stays complete even if the run folder is cleaned."""
        if not self._send("log_artifact", run_id, local_path, artifact_path):
            copy = self.spool_dir / "artifacts" / str(self.spooled) / Path(local_path).name
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(local_path, copy)
            self._spool({"method": "log_artifact", "run_id": run_id, "path": str(copy), "artifact_path": artifact_path})


def find_spools(root: Path) -> list[Path]:
    """Every spool under `root` not yet synced, oldest first."""
    spools = [calls.parent for calls in root.rglob(f"{SPOOL_DIR}/{CALLS}")]
    return sorted(spools, key=lambda spool: (spool / CALLS).stat().st_mtime)


def replay(spool: Path) -> int:
    """Deliver a spool's calls in order to the server it was meant for; returns how many were sent.

    Progress is recorded after each call, so a sync that is itself interrupted resumes where it
    stopped instead of logging anything twice. A fully replayed spool is renamed `*.synced`.
    """
    from mlflow import MlflowClient

    uri = (spool / "tracking_uri").read_text().strip()
    check_tracking_uri(uri)
    client = MlflowClient(uri)
    calls = [json.loads(line) for line in (spool / CALLS).read_text().splitlines() if line.strip()]
    progress = spool / REPLAYED
    done = int(progress.read_text()) if progress.exists() else 0
    for index, call in enumerate(calls[done:], start=done):
        method, run_id = call["method"], call["run_id"]
        if method == "log_batch":
            client.log_batch(
                run_id,
                metrics=[Metric(**m) for m in call["metrics"]],
                params=[Param(**p) for p in call["params"]],
                tags=[RunTag(**t) for t in call["tags"]],
            )
        elif method == "set_tag":
            client.set_tag(run_id, call["key"], call["value"])
        elif method == "set_terminated":
            client.set_terminated(run_id, call["status"])
        elif method == "log_artifact":
            client.log_artifact(run_id, call["path"], call["artifact_path"])
        else:
            raise WorkbenchError(f"{spool / CALLS}, line {index + 1}: unknown call {method!r}; was it edited by hand?")
        progress.write_text(str(index + 1))
    spool.rename(spool.with_name(f"{SPOOL_DIR}.synced-{time.strftime('%Y%m%d-%H%M%S')}"))
    return len(calls) - done
