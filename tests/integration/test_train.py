"""Smoke training of both experiments, asserting on what lands in MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import cli_train
from mlflow import MlflowClient
from omegaconf import open_dict

from core.errors import WorkbenchError
from models.train import train
from tracking.runs import RUN_RECORD

REPO = Path(__file__).resolve().parents[2]


def _only_run(uri: str):
    client = MlflowClient(uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs(e.experiment_id)]
    assert len(runs) == 1
    return client, runs[0]


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_cli_smoke_trains_age_and_records_the_run(tmp_path, tracking_uri, shared_cache):
    command = cli_train(tmp_path / "outputs", shared_cache, "experiment=age_synthetic")
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=os.environ | {"COLUMNS": "120"})
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    assert elapsed < 60, f"smoke training took {elapsed:.0f}s"

    client, run = _only_run(tracking_uri)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.head.kind"] == "dldl"
    assert run.data.params["trainer.max_epochs"] == "1"
    for key in (
        "test/age/mae",
        "test/age/baseline_mae",
        "data/age/bayes_mae",
        "val/age/mae",
        "val/age/gate13/auroc",
        "train/age/fit_seconds",
        "val/age/gate16/auroc",
        "val/age/gate18/auroc",
    ):
        assert key in run.data.metrics, key
    assert run.data.metrics["data/age/bayes_mae"] >= 1.0
    assert len(run.data.tags["git.commit"]) in (40, 7) and run.data.tags["git.dirty"] in ("true", "false")
    assert run.data.tags["versions.torch"].startswith("2.")
    assert len(run.data.tags["data.digest"]) == 64
    artifacts = _artifacts(client, run.info.run_id)
    assert "config/config_resolved.yaml" in artifacts
    assert "data/preview.png" in artifacts
    assert any(a.startswith("checkpoints/") and a.endswith(".ckpt") for a in artifacts)
    contexts = {tag.value for i in run.inputs.dataset_inputs for tag in i.tags}
    assert contexts == {"training", "validation", "calibration", "testing"}


def test_content_smoke_trains_in_process(compose_train, tracking_uri):
    metrics = train(compose_train("experiment=content_synthetic", "debug=smoke"))
    assert metrics["data/content/bayes_accuracy"] == pytest.approx(0.92)
    _, run = _only_run(tracking_uri)
    assert run.info.status == "FINISHED"
    for key in (
        "test/content/accuracy",
        "test/content/auroc",
        "test/content/ece_uncalibrated",
        "test/content/baseline_accuracy",
    ):
        assert key in run.data.metrics, key
    assert "test/content/ece" not in run.data.metrics  # uncalibrated: never named like evaluate's calibrated ECE
    assert run.data.params["data.generator.flip_prob"] == "0.08"
    # Tidy histories: each key logged once per step, in step order, never re-logged at step 0 at the end,
    # and test figures (Lightning's own, and the baseline) logged exactly once.
    client = MlflowClient(tracking_uri)
    for key in set(run.data.metrics) - {"epoch"}:  # Lightning logs `epoch` beside every other key
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == sorted(steps) and len(steps) == len(set(steps)), (key, steps)
        if key.startswith("test/"):
            assert len(steps) == 1 and steps[0] > 0, (key, steps)


# Enough data and epochs to learn (a smoke run's 4 batches do not), still about 10 s per run on 2 cores.
LEARNING = ("debug=smoke", "logger=none", "smoke.subjects=600", "trainer.max_epochs=6")
LEARNING += ("trainer.limit_train_batches=null", "trainer.limit_test_batches=null")


@pytest.mark.parametrize("head", ["regression", "dldl"])
def test_age_heads_learn_well_beyond_the_constant_baseline(compose_train, head):
    metrics = train(compose_train("experiment=age_synthetic", *LEARNING, f"model.head.kind={head}"))
    assert metrics["test/age/mae"] < 0.8 * metrics["test/age/baseline_mae"]  # measured: 0.68 and 0.42


def test_the_corn_head_trains_end_to_end(compose_train):
    """CORN learns too slowly to beat the baseline at a CPU test's size; tests/unit/test_age_heads.py checks
    that it learns a clean mapping. Here: the pipeline runs with it and reports a plausible error."""
    metrics = train(compose_train("experiment=age_synthetic", "debug=smoke", "logger=none", "model.head.kind=corn"))
    assert 0 < metrics["test/age/mae"] < 2 * metrics["test/age/baseline_mae"]


def test_the_content_model_learns_well_beyond_the_majority_baseline(compose_train):
    metrics = train(compose_train("experiment=content_synthetic", *LEARNING))
    assert metrics["test/content/accuracy"] > metrics["test/content/baseline_accuracy"] + 0.2  # measured: +0.39
    assert metrics["test/content/auroc"] > 0.8  # measured: 0.92


def test_same_config_and_seed_give_identical_test_metrics(compose_train):
    overrides = ("experiment=content_synthetic", "debug=smoke", "logger=none")
    first, second = train(compose_train(*overrides)), train(compose_train(*overrides))
    tested = {k: v for k, v in first.items() if k.startswith("test/")}
    assert tested and tested == {k: second[k] for k in tested}


def test_ckpt_path_last_resumes_in_the_same_mlflow_run(compose_train, tracking_uri):
    overrides = ("experiment=age_synthetic", "debug=smoke", "trainer.max_epochs=2")
    crashing = compose_train(*overrides, "+callbacks.crash._target_=helpers.CrashAtEpoch", "+callbacks.crash.epoch=1")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashing)
    client, interrupted = _only_run(tracking_uri)
    assert interrupted.info.status == "FAILED"

    # The crash callback is a config change; resuming across one needs resume.allow_config_change.
    resumed = compose_train(*overrides, "ckpt_path=last", "resume.allow_config_change=true")
    train(resumed)
    client, run = _only_run(tracking_uri)
    assert run.info.run_id == interrupted.info.run_id
    assert run.info.status == "FINISHED"
    val_steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/age/mae")]
    assert len(val_steps) == 2 and val_steps[1] > val_steps[0]  # epoch 0 before the crash, epoch 1 after
    assert "test/age/mae" in run.data.metrics
    record = json.loads((Path(resumed.paths.output_dir) / RUN_RECORD).read_text())
    assert record["run_id"] == run.info.run_id


def test_help_is_fast_and_imports_no_torch():
    probe = "import sys, scripts.cli as c; c.main(['--help']); assert 'torch' not in sys.modules, 'torch imported'"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "train" in done.stdout
    assert time.monotonic() - started < 5


def test_cli_config_error_exits_2_with_a_readable_message(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "train", "model.backbone.nmae=resnet18", f"paths.log_dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "model.backbone.nmae" in done.stderr and "Did you mean model.backbone.name?" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_nan_loss_stops_the_run_within_the_step_and_marks_it_failed(compose_train, tracking_uri):
    cfg = compose_train(
        "experiment=age_synthetic",
        "debug=smoke",
        "data.batch_size=32",  # smoke's 198 training images give batch 2 only in batches of 32
        "+callbacks.poison._target_=helpers.PoisonWeights",
        "+callbacks.poison.batch=2",
    )
    with pytest.raises(WorkbenchError, match=r"training loss became nan at global step 2 \(epoch 0, batch 2"):
        train(cfg)
    _, run = _only_run(tracking_uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure"].startswith("WorkbenchError: The training loss became nan")
    checkpoints = list(Path(cfg.paths.output_dir).rglob("*.ckpt"))
    assert checkpoints == []  # nothing was saved from the poisoned step


EXIT_CODES = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT}
REASONS = {"SIGTERM": "SIGTERM (pre-emption)", "SIGINT": "SIGINT (Ctrl-C)"}


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_saves_a_checkpoint_and_ends_the_run_killed(tmp_path, tracking_uri, shared_cache, signal_name):
    command = cli_train(tmp_path / "outputs", shared_cache, "experiment=content_synthetic", "trainer.max_epochs=400")
    log = tmp_path / "stderr.txt"
    # As from a terminal: SIGINT at its default even when the tests run as a background job (which ignores it).
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 180
    while not list((tmp_path / "outputs").rglob("last.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.5)  # the first step checkpoint: training is under way
    (last,) = (tmp_path / "outputs").rglob("last.ckpt")
    signalled_ns = time.time_ns()
    process.send_signal(getattr(signal, signal_name))
    try:
        process.wait(timeout=180)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"no exit 180 s after {signal_name}; its stderr ends:\n{log.read_text()[-3000:]}")
    assert process.returncode == EXIT_CODES[signal_name], log.read_text()[-2000:]
    _, run = _only_run(tracking_uri)
    assert run.info.status == "KILLED"
    assert run.data.tags["killed.reason"] == REASONS[signal_name]
    assert last.stat().st_mtime_ns > signalled_ns  # rewritten on the signal, not left from the last epoch
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] > 0


@pytest.mark.slow
@pytest.mark.ci  # four concurrent trainings on 2 cores take about a minute
def test_four_runs_started_at_once_on_one_sqlite_store_all_finish(tmp_path, tracking_uri):
    """Fresh store and fresh cache: the runs race on MLflow's schema, the experiment and the render."""
    command = cli_train(tmp_path / "outputs", tmp_path / "cache", "experiment=content_synthetic")
    logs = [tmp_path / f"run{i}.log" for i in range(4)]
    processes = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log.open("w")) for log in logs]
    for process, log in zip(processes, logs, strict=True):
        assert process.wait(timeout=300) == 0, log.read_text()[-2000:]
    client = MlflowClient(tracking_uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs(e.experiment_id)]
    assert len(runs) == 4 and len({r.info.run_id for r in runs}) == 4
    assert all(r.info.status == "FINISHED" and "test/content/accuracy" in r.data.metrics for r in runs)
    assert len(list((tmp_path / "cache").glob("synthetic-content-*"))) == 1


def test_a_full_disk_names_the_folder_and_ends_the_run_failed(compose_train, tracking_uri, tmp_path):
    """A real 4 MiB tmpfs as the output disk: the first checkpoint no longer fits."""
    disk = tmp_path / "small-disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    assert mounted.returncode == 0, f"this test mounts a tmpfs and needs root: {mounted.stderr!r}"
    try:
        cfg = compose_train("experiment=age_synthetic", "debug=smoke")
        with open_dict(cfg):
            cfg.paths.output_dir = str(disk / "run")
            cfg.callbacks.model_checkpoint.dirpath = str(disk / "run" / "checkpoints")
        Path(cfg.paths.output_dir).mkdir()
        with pytest.raises(WorkbenchError, match=rf"The disk holding {disk}/run/checkpoints is full"):
            train(cfg)
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    _, run = _only_run(tracking_uri)
    assert run.info.status == "FAILED"
    assert "No space left on device" in run.data.tags["failure"]
