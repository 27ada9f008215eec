"""Hydra multirun with the Optuna sweeper: parallel joblib trials and a submitit job, each its own MLflow run."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml
from helpers import REPO, cli_train
from mlflow import MlflowClient


def _sweep(tmp_path, cache, *overrides: str) -> tuple[subprocess.CompletedProcess, list]:
    """Run `childsafe train -m ... hparams_search=age_optuna` on a fresh store; return the process and its runs."""
    command = cli_train(tmp_path / "outputs", cache, "-m", "experiment=age_synthetic", "hparams_search=age_optuna")
    done = subprocess.run(
        [*command, *overrides, "test=false"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ | {"COLUMNS": "120"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("childsafe-age_synthetic")
    return done, client.search_runs(experiment.experiment_id)


def _best_value(tmp_path) -> float:
    (results,) = (tmp_path / "outputs" / "age_synthetic" / "multiruns").glob("*/optimization_results.yaml")
    return yaml.safe_load(results.read_text())["best_value"]


@pytest.mark.slow
@pytest.mark.ci
def test_four_optuna_trials_two_at_a_time_share_one_fresh_sqlite_store(tmp_path, tracking_uri, shared_cache):
    done, runs = _sweep(tmp_path, shared_cache, "launcher=joblib", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2")
    assert "database is locked" not in done.stdout + done.stderr
    assert len(runs) == 4 and {run.info.status for run in runs} == {"FINISHED"}
    assert len({run.data.tags["sweep.id"] for run in runs}) == 1
    assert sorted(run.data.tags["sweep.trial"] for run in runs) == ["0", "1", "2", "3"]
    assert len({run.data.params["model.optimizer.lr"] for run in runs}) == 4  # Optuna chose each trial's values
    # What each trial returned to the sweeper is its logged metric: the study's best is the runs' best.
    assert _best_value(tmp_path) == pytest.approx(min(run.data.metrics["val/age/mae"] for run in runs))


@pytest.mark.slow
@pytest.mark.ci
def test_one_trial_runs_as_a_submitit_local_job(tmp_path, tracking_uri, shared_cache):
    _, runs = _sweep(tmp_path, shared_cache, "launcher=submitit_local", "hydra.sweeper.n_trials=1")
    (run,) = runs
    assert run.info.status == "FINISHED" and run.data.tags["sweep.trial"] == "0"
    assert _best_value(tmp_path) == pytest.approx(run.data.metrics["val/age/mae"])
    (job_log,) = (tmp_path / "outputs" / "age_synthetic" / "multiruns").glob("*/.submitit/*/*_0_log.out")
    assert run.info.run_id in job_log.read_text()  # the trial ran inside the submitit job
