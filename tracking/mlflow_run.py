"""MLflow glue shared by every stage: where runs go, what each run records about its origin."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from core.errors import WorkbenchError
from core.paths import SOURCE_ROOT, workbench_home

TRACKED_PACKAGES = ("torch", "torchvision", "lightning", "torchmetrics", "mlflow", "hydra-core", "onnx", "onnxruntime")


def default_tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else the embedded SQLite store under `mlruns/` of the workbench home."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workbench_home() / 'mlruns' / 'mlflow.db'}"


def default_artifact_root(tracking_uri: str) -> str | None:
    """Artefacts of a local SQLite store live beside it; a server decides its own artefact root."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return None


def probe_writable(folder: Path) -> None:
    """Create `folder` if needed and write a file in it: raises OSError when that is impossible."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / ".write-probe"
    probe.write_text("ok")
    probe.unlink()


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail before any training if runs could not be recorded."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
                response.read()
        except (urllib.error.URLError, OSError) as error:
            raise WorkbenchError(
                f"The MLflow tracking server at {uri} is not reachable ({error}). Start it "
                "(`make mlflow-server`), fix MLFLOW_TRACKING_URI, or unset it to use the local SQLite store."
            ) from error
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            probe_writable(folder)
        except OSError as error:
            raise WorkbenchError(
                f"The MLflow SQLite store {uri} cannot be written: folder {folder} is not writable ({error}). "
                "Point MLFLOW_TRACKING_URI at a writable location."
            ) from error
    elif "://" not in uri and not uri.startswith("file:"):
        raise WorkbenchError(
            f"MLFLOW_TRACKING_URI={uri!r} is not a tracking URI. Use sqlite:///path/to/mlflow.db or http://host:port."
        )


def git_state() -> dict[str, str]:
    """The source checkout's commit; "unknown" for an installed wheel (whose folder may sit inside some
    unrelated repository, so git is asked only where the package's parent is a checkout)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=SOURCE_ROOT, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    if not (SOURCE_ROOT / ".git").exists():
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    try:
        return {"git.commit": git("rev-parse", "HEAD"), "git.dirty": str(bool(git("status", "--porcelain"))).lower()}
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[f"versions.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[f"versions.{name}"] = "absent"
    return versions


def origin_tags() -> dict[str, str]:
    """Tags every run carries: the code it ran and the packages it ran with."""
    return git_state() | package_versions()


def _finite_or_none(value: Any) -> Any:
    """A non-finite float becomes None, inside lists too: params are read back by strict JSON parsers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [_finite_or_none(item) for item in value]
    return value


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Params for MLflow: nested keys joined by dots, lists as JSON, and no NaN or Infinity ("null" instead)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(_finite_or_none(value), allow_nan=False)
        else:
            clean = _finite_or_none(value)
            flat[name] = "null" if clean is None else clean
    return flat


def log_dataset_inputs(
    client,
    run_id: str,
    manifest: pd.DataFrame,
    source: Path,
    name: str,
    digest: str,
    target: str,
    contexts: dict[str, str],
) -> None:
    """Record each split as an `mlflow.data` input so a run names the exact data it saw."""
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for split, context in contexts.items():
        rows = manifest[manifest["split"] == split]
        dataset = mlflow.data.from_pandas(
            rows, source=str(source), targets=target, name=f"{name}:{split}", digest=digest[:32]
        )
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    with store_lock(default_tracking_uri()):  # identical datasets logged by concurrent runs share one row
        client.log_inputs(run_id, datasets=inputs)


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise schema creation and experiment creation on a SQLite store across processes.

    Several runs started at once against a fresh store otherwise race on MLflow's migrations
    ("database is locked"), on creating the same experiment, and on registering the same dataset
    (unique-key conflicts).
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    with FileLock(uri.removeprefix("sqlite:///") + ".lock", timeout=120):
        yield


def ensure_experiment(uri: str, name: str) -> str:
    """The experiment's id, creating the store and the experiment first if needed (safe under concurrency)."""
    from mlflow import MlflowClient

    with store_lock(uri):
        client = MlflowClient(uri)
        existing = client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        root = default_artifact_root(uri)
        return client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)


@contextmanager
def stage_run(stage: str, parent_run_id: str | None, task: str, experiment: str) -> Iterator[tuple[Any, str]]:
    """An MLflow run for a stage after training, nested under the run it read; FAILED if the stage raises.

    Tagged like the train run (`task` age or content, `experiment` the training experiment) and named
    `<stage>-<experiment>-<time>`, so two pipelines' runs differ in compare views and chart legends.
    """
    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    uri = default_tracking_uri()
    check_tracking_uri(uri)
    client = MlflowClient(uri)
    if parent_run_id:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
    else:
        experiment_id = ensure_experiment(uri, f"childsafe-{stage}")
    run_name = f"{stage}-{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    tags = origin_tags() | {"stage": stage, "task": task, "experiment": experiment, MLFLOW_RUN_NAME: run_name}
    if parent_run_id:
        tags |= {MLFLOW_PARENT_RUN_ID: parent_run_id, PARENT_TAG: parent_run_id}
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    try:
        yield client, run_id
    except BaseException as error:
        client.set_tag(run_id, "failure", f"{type(error).__name__}: {error}"[:5000])
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


NOT_LOGGED = "not_logged/"


def log_metrics(
    client, run_id: str, metrics: dict[str, float | None], unmeasured: dict[str, str] | None = None
) -> None:
    """Log finite metrics in batches; never NaN or Infinity, which strict JSON readers of MLflow reject.

    A non-finite or None value is not logged as a metric but as the tag `not_logged/<key>` saying what it
    was, and so is each key in `unmeasured` (a figure the stage could not measure) with its reason:
    a missing metric is always explained on the run.
    """
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    finite = {key: float(value) for key, value in metrics.items() if value is not None and math.isfinite(value)}
    reasons = {key: f"value {value} is not a finite number" for key, value in metrics.items() if key not in finite}
    reasons |= unmeasured or {}
    batch = [Metric(key, value, now, 0) for key, value in finite.items()]
    for start in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[start : start + 1000])
    tags = [RunTag(f"{NOT_LOGGED}{key}", reason or "not measurable") for key, reason in reasons.items()]
    for start in range(0, len(tags), 100):  # MLflow's limit on tags per batch
        client.log_batch(run_id, tags=tags[start : start + 100])


DESCRIPTION_TAG = "mlflow.note.content"  # what the MLflow UI shows, and edits, as a run's description


def run_link(client, run_id: str, artifact: str | None = None) -> str:
    """A markdown target for a run (or one of its artefacts) in the MLflow UI.

    Absolute when the tracking URI is a server; otherwise the UI's own hash route, which works from
    inside the UI serving this store (`mlflow ui --backend-store-uri ...`).
    """
    experiment = client.get_run(run_id).info.experiment_id
    route = f"#/experiments/{experiment}/runs/{run_id}" + (f"/artifacts/{artifact}" if artifact else "")
    uri = default_tracking_uri()
    return (uri.rstrip("/") + "/" + route) if uri.startswith(("http://", "https://")) else route


def append_description(client, run_id: str, line: str) -> None:
    """Add a markdown line to a run's description (the train run lists its stages' runs as they finish)."""
    current = client.get_run(run_id).data.tags.get(DESCRIPTION_TAG, "").rstrip()
    client.set_tag(run_id, DESCRIPTION_TAG, f"{current}\n{line}".lstrip("\n"))


PARENT_TAG = "lineage.parent_run_id"  # set by stage_run on every stage's run: the run it read


def finished_runs_under(client, experiment_id: str, stage: str, parents: list[str]) -> list:
    """Finished runs of `stage` whose lineage parent is one of `parents`, newest first."""
    found = [
        run
        for parent in parents
        for run in client.search_runs(
            [experiment_id],
            f"tags.stage = '{stage}' and tags.`{PARENT_TAG}` = '{parent}' and attributes.status = 'FINISHED'",
        )
    ]
    return sorted(found, key=lambda run: run.info.start_time, reverse=True)
