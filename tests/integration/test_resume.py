"""Kill -9 in the middle of an epoch, resume, and land on exactly the numbers of an unbroken run."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import REPO, cli_train
from mlflow import MlflowClient

# 3 epochs of 4 batches of 32; last.ckpt every 2 steps, so a kill before step 7 (epoch 1 of 0..2,
# batch 3) falls back to step 6, part-way through epoch 1.
RUN = ("experiment=age_synthetic", "trainer.max_epochs=3", "data.batch_size=32")
EVERY_TWO_STEPS = "callbacks.step_checkpoint.every_n_train_steps=2"


def _train(tmp_path: Path, store: str, cache: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = os.environ | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / store / 'mlflow.db'}",
        "PYTHONPATH": str(REPO / "tests"),
    }
    command = cli_train(tmp_path / store / "outputs", cache, *RUN, EVERY_TWO_STEPS, *overrides)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _the_run(tmp_path: Path, store: str):
    client = MlflowClient(f"sqlite:///{tmp_path / store / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs(e.experiment_id)]
    assert len(runs) == 1
    return runs[0]


@pytest.mark.slow
@pytest.mark.ci  # three CLI trainings: about a minute on 2 cores
def test_sigkill_mid_epoch_then_resume_gives_identical_test_metrics(tmp_path, shared_cache):
    unbroken = _train(tmp_path, "unbroken", shared_cache)
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]

    killed = _train(
        tmp_path, "killed", shared_cache, "+callbacks.kill._target_=helpers.KillAtStep", "+callbacks.kill.step=7"
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert _the_run(tmp_path, "killed").info.status == "RUNNING"  # nothing could mark it
    last = next((tmp_path / "killed" / "outputs").rglob("last.ckpt"))
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 6 and saved["epoch"] == 1  # mid-epoch: at most 2 steps lost

    resumed = _train(tmp_path, "killed", shared_cache, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr

    reference, run = _the_run(tmp_path, "unbroken"), _the_run(tmp_path, "killed")
    assert run.info.status == "FINISHED"
    tested = {k: v for k, v in reference.data.metrics.items() if k.startswith("test/")}
    assert len(tested) > 5
    for name, value in tested.items():
        assert abs(run.data.metrics[name] - value) <= 1e-6, (name, run.data.metrics[name], value)


@pytest.mark.slow
@pytest.mark.ci
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_last_ckpt_intact(tmp_path, shared_cache):
    killed = _train(
        tmp_path, "torn", shared_cache, "+callbacks.kill._target_=helpers.KillMidSave", "+callbacks.kill.step=6"
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = next((tmp_path / "torn" / "outputs").rglob("last.ckpt"))
    assert last.with_name(".last.ckpt.partial").exists()  # the torn write happened, beside the target
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4

    resumed = _train(tmp_path, "torn", shared_cache, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _the_run(tmp_path, "torn").info.status == "FINISHED"
