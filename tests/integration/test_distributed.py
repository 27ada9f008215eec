"""Lightning DDP on CPU (gloo): two real processes started by Lightning's own launcher, one MLflow run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import REPO, cli_train
from mlflow import MlflowClient

from tracking.runs import RUN_RECORD

WORLD_SIZE, BATCH_SIZE, BATCHES = 2, 32, 4


@pytest.mark.slow
@pytest.mark.ci
def test_two_process_ddp_on_cpu_records_one_run_with_global_counts(tmp_path, tracking_uri, shared_cache):
    positions = tmp_path / "positions"
    command = cli_train(
        tmp_path / "outputs",
        shared_cache,
        "experiment=age_synthetic",
        "data.generator.num_subjects=300",  # 396 training images: both ranks get their 4 full batches
        "trainer=ddp",
        "trainer.accelerator=cpu",
        f"trainer.devices={WORLD_SIZE}",
        f"trainer.limit_train_batches={BATCHES}",
        f"data.batch_size={BATCH_SIZE}",
        "+callbacks.positions._target_=helpers.RecordTrainPositions",
        f"+callbacks.positions.folder={positions}",
    )
    env = os.environ | {"PYTHONPATH": str(REPO / "tests"), "COLUMNS": "120"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient(tracking_uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs(e.experiment_id)]
    assert len(runs) == 1, [r.info.run_id for r in runs]  # rank 1 recorded nothing
    run = runs[0]
    assert run.info.status == "FINISHED"
    # The sum over ranks of what each trained on, synced by Lightning before rank zero logged it.
    assert run.data.metrics["train/age/samples"] == WORLD_SIZE * BATCHES * BATCH_SIZE
    assert "val/age/mae" in run.data.metrics and "test/age/mae" in run.data.metrics

    shards = [torch.load(positions / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
    assert all(len(shard) == BATCHES * BATCH_SIZE for shard in shards)
    assert not set(shards[0].tolist()) & set(shards[1].tolist())  # DistributedSampler: disjoint shards

    (record,) = (tmp_path / "outputs" / "age_synthetic" / "runs").glob(f"*/{RUN_RECORD}")
    assert json.loads(record.read_text())["run_id"] == run.info.run_id
    (checkpoint,) = Path(client.download_artifacts(run.info.run_id, "checkpoints", str(tmp_path))).glob("*.ckpt")
    state = torch.load(checkpoint, weights_only=True)
    assert state["global_step"] == BATCHES and any(key.startswith("backbone.") for key in state["state_dict"])
