"""Interrupt training in the middle of a step, resume with `ckpt_path=last`, and land on exactly the numbers
of an unbroken run; and what `ckpt_path=last` refuses to touch (a finished run, a live one, another config)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import FAULT_ENV, REPO, cli_train
from mlflow import MlflowClient
from omegaconf import OmegaConf, open_dict

from core.errors import WorkbenchError
from models.train import find_resume_point
from tracking.runs import RUN_CONFIG, RunRecord

# Demo-sized batches (128) over a smoke dataset of 400 subjects: 4 batches an epoch (smoke's limit),
# 2 epochs, 8 steps; last.ckpt every 5 steps and after each validation. Each fault strikes in the
# middle of the step after global step 5 (epoch 1, batch 1), after the backward pass and before the
# optimizer step, just after the periodic save of step 5.
# The face augmentation is on, so a resumed run must also redraw every augmentation exactly.
RUN = (
    "experiment=age_synthetic",
    "augment=face",
    "smoke.subjects=400",
    "trainer.max_epochs=2",
    "callbacks.step_checkpoint.every_n_train_steps=5",
    "+callbacks.fault._target_=helpers.Fault",
)
FAULT_STEP = PERIODIC_STEP = 5
EPOCH_END_STEP = 4  # last.ckpt written when epoch 0's validation ended


def _train(store: Path, cache: Path, *overrides: str, fault: str | None = None) -> subprocess.CompletedProcess:
    """The CLI in its own session (so a signal to its process group reaches nothing else) with SIGINT at its
    default, as from a terminal, even when the tests run as a background job (which ignores it)."""
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}", "PYTHONPATH": str(REPO / "tests")}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = f"{fault}@{FAULT_STEP}"
    return subprocess.run(
        cli_train(store / "outputs", cache, *RUN, *overrides),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _the_run(store: Path):
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs(e.experiment_id)]
    assert len(runs) == 1
    return client, runs[0]


def _val_steps(store: Path) -> list[int]:
    client, run = _the_run(store)
    return [m.step for m in client.get_metric_history(run.info.run_id, "val/age/mae")]


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Path:
    """One uninterrupted run, the reference of every resume test (its store folder)."""
    store = tmp_path_factory.mktemp("unbroken")
    done = _train(store, shared_cache)
    assert done.returncode == 0, done.stderr[-3000:]
    return store


# fault -> (exit status, MLflow status, last.ckpt's global step). A signal that asks to stop (SIGINT,
# SIGTERM) ends the step it landed in and saves there; SIGKILL and a crash leave the periodic checkpoint.
OUTCOMES = {
    "SIGINT": (128 + signal.SIGINT, "KILLED", FAULT_STEP + 1),
    "SIGINT-group": (128 + signal.SIGINT, "KILLED", FAULT_STEP + 1),
    "SIGINT-twice": (128 + signal.SIGINT, "KILLED", PERIODIC_STEP),  # the second Ctrl-C: stop at once, no save
    "SIGTERM": (128 + signal.SIGTERM, "KILLED", FAULT_STEP + 1),
    "SIGTERM-group": (128 + signal.SIGTERM, "KILLED", FAULT_STEP + 1),
    "SIGKILL": (-signal.SIGKILL, "RUNNING", PERIODIC_STEP),
    "SIGKILL-group": (-signal.SIGKILL, "RUNNING", PERIODIC_STEP),
    "crash": (1, "FAILED", PERIODIC_STEP),
}
IN_CI = {"SIGINT", "SIGINT-group", "SIGTERM-group", "SIGKILL", "SIGKILL-group"}  # about 35 s each on 2 cores


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault", [pytest.param(fault, marks=[pytest.mark.ci] if fault in IN_CI else []) for fault in OUTCOMES]
)
def test_an_interruption_mid_step_then_resume_gives_identical_test_metrics(tmp_path, shared_cache, unbroken, fault):
    status_code, status, saved_step = OUTCOMES[fault]
    interrupted = _train(tmp_path, shared_cache, fault=fault)
    assert interrupted.returncode == status_code, interrupted.stderr[-3000:]
    _, run = _the_run(tmp_path)
    assert run.info.status == status
    if status == "KILLED":
        assert run.data.tags["killed.reason"].startswith(fault.split("-")[0])
    last = next((tmp_path / "outputs").rglob("last.ckpt"))
    saved = torch.load(last, map_location="cpu", weights_only=True)
    # A consistent state: the last completed step, mid-epoch, with every started batch completed.
    assert (saved["global_step"], saved["epoch"]) == (saved_step, 1)
    progress = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]
    assert progress["ready"] == progress["started"] == progress["processed"]
    # Saved where the step ended (a stop asked for), or periodically, in on_train_batch_end, just before the
    # loop counts the batch completed.
    assert progress["completed"] == progress["processed"] - (0 if saved_step == FAULT_STEP + 1 else 1)

    # SIGKILL leaves the run RUNNING with a heartbeat seconds old: resuming it now needs stale_after_s=0.
    resumed = _train(tmp_path, shared_cache, "ckpt_path=last", "resume.stale_after_s=0")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    (_, reference), (_, run) = _the_run(unbroken), _the_run(tmp_path)
    assert run.info.status == "FINISHED"
    tested = {k: v for k, v in reference.data.metrics.items() if k.startswith("test/")}
    assert len(tested) > 5
    for name, value in tested.items():
        assert abs(run.data.metrics[name] - value) <= 1e-6, (name, run.data.metrics[name], value)
    assert _val_steps(tmp_path) == _val_steps(unbroken)  # validation logged at the same steps as unbroken


@pytest.mark.slow
@pytest.mark.ci  # no training: it stops before any work
def test_ckpt_path_last_never_touches_a_finished_run(shared_cache, unbroken):
    _, before = _the_run(unbroken)
    done = _train(unbroken, shared_cache, "ckpt_path=last", "trainer.max_epochs=1", "model.optimizer.lr=0.01")
    assert done.returncode == 2, done.stderr[-3000:]
    message = " ".join(done.stderr.split())  # the console wraps long lines
    assert "no interrupted run of task 'age_synthetic' to resume" in message
    assert "FINISHED" in message and "Traceback" not in message
    _, after = _the_run(unbroken)
    assert (after.info.status, after.info.end_time) == ("FINISHED", before.info.end_time)
    folder = next((unbroken / "outputs").rglob("last.ckpt")).parent.parent
    assert RunRecord(folder).read()["status"] == "FINISHED"


@pytest.mark.slow
@pytest.mark.ci
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_last_ckpt_intact(tmp_path, shared_cache):
    torn = ("+callbacks.kill._target_=helpers.KillMidSave", f"+callbacks.kill.step={PERIODIC_STEP}")
    killed = _train(tmp_path, shared_cache, *torn)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = next((tmp_path / "outputs").rglob("last.ckpt"))
    assert last.with_name(".last.ckpt.partial").exists()  # the torn write happened, beside the target
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == EPOCH_END_STEP

    # Without the kill callback the config differs in callbacks.kill, a change made on purpose here.
    resumed = _train(
        tmp_path, shared_cache, "ckpt_path=last", "resume.stale_after_s=0", "resume.allow_config_change=true"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, run = _the_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.tags["resume.config_changed"] == "callbacks.kill._target_, callbacks.kill.step"


# Which run `ckpt_path=last` picks, on run folders written by hand (no training): default tests.


def _run_folder(compose_train, status: str | None, heartbeat_age_s: float, *overrides: str) -> Path:
    """A run folder as `childsafe train` leaves it: config, run record and a (dummy) last.ckpt."""
    cfg = compose_train("experiment=age_synthetic", "debug=smoke", "logger=none", *overrides)
    folder = Path(cfg.paths.output_dir)
    (folder / RUN_CONFIG).write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    os.utime(folder / "checkpoints" / "last.ckpt", (time.time() - heartbeat_age_s,) * 2)
    RunRecord(folder).update(run_id=None, status=status, heartbeat=time.time() - heartbeat_age_s)
    return folder


def _resume(compose_train, *overrides: str):
    return find_resume_point(compose_train("experiment=age_synthetic", "debug=smoke", "logger=none", *overrides))


def test_ckpt_path_last_takes_the_newest_interrupted_run_and_skips_finished_and_live_ones(compose_train):
    killed = _run_folder(compose_train, "KILLED", 300)
    dead = _run_folder(compose_train, "RUNNING", 200)  # SIGKILLed: RUNNING for ever, heartbeat stale
    _run_folder(compose_train, "RUNNING", 5)  # still training
    _run_folder(compose_train, "FINISHED", 1)  # the newest, but finished
    assert _resume(compose_train, "ckpt_path=last").run_dir == dead
    RunRecord(dead).update(status="FINISHED")
    assert _resume(compose_train, "ckpt_path=last").run_dir == killed


def test_ckpt_path_last_finds_an_interrupted_run_in_a_folder_named_with_paths_output_dir(compose_train, tmp_path):
    chosen = tmp_path / "elsewhere" / "x"  # lightning-hydra-template style: paths.output_dir=/data/runs/x
    chosen.parent.mkdir()
    _run_folder(compose_train, "KILLED", 300).rename(chosen)
    cfg = compose_train("experiment=age_synthetic", "debug=smoke", "logger=none", "ckpt_path=last")
    with pytest.raises(WorkbenchError, match="no interrupted run"):
        find_resume_point(cfg)  # the default run folders hold none
    with open_dict(cfg):
        cfg.paths.output_dir = str(chosen)
    assert find_resume_point(cfg).run_dir == chosen


def test_ckpt_path_last_with_only_finished_and_live_runs_says_so(compose_train):
    _run_folder(compose_train, "FINISHED", 100)
    _run_folder(compose_train, "RUNNING", 5)
    with pytest.raises(WorkbenchError, match="no interrupted run of task 'age_synthetic' to resume") as error:
        _resume(compose_train, "ckpt_path=last")
    assert "FINISHED" in str(error.value) and "may still be training" in str(error.value)


def test_a_finished_status_in_mlflow_wins_over_a_record_left_running(compose_train, tracking_uri):
    folder = _run_folder(compose_train, "RUNNING", 500)  # the record missed the end, MLflow did not
    client = MlflowClient(tracking_uri)
    run = client.create_run(client.create_experiment("childsafe-age_synthetic"))
    client.set_terminated(run.info.run_id, "FINISHED")
    RunRecord(folder).update(run_id=run.info.run_id, tracking_uri=tracking_uri)
    with pytest.raises(WorkbenchError, match="no interrupted run"):
        _resume(compose_train, "ckpt_path=last")
    assert json.loads((folder / "mlflow_run.json").read_text())["status"] == "RUNNING"  # nothing was rewritten


def test_ckpt_path_last_refuses_a_run_trained_with_another_config_and_names_the_keys(compose_train):
    folder = _run_folder(compose_train, "KILLED", 300, "model.optimizer.lr=0.01", "seed=7")
    with pytest.raises(WorkbenchError) as error:
        _resume(compose_train, "ckpt_path=last")
    message = str(error.value)
    assert "model.optimizer.lr: 0.01 -> 0.003" in message and "seed: 7 -> 42" in message
    assert "paths." not in message and "dirpath" not in message  # where files go is not a config change
    assert "resume.allow_config_change=true" in message and f"ckpt_path={folder}/checkpoints/last.ckpt" in message

    allowed = _resume(compose_train, "ckpt_path=last", "resume.allow_config_change=true")
    assert allowed.run_dir == folder
    assert set(allowed.config_changes) == {"model.optimizer.lr", "seed", "data.shuffle_seed"}  # shuffle_seed: ${seed}


def test_an_explicit_checkpoint_path_starts_a_new_run(compose_train):
    folder = _run_folder(compose_train, "FINISHED", 100, "seed=7")
    point = _resume(compose_train, f"ckpt_path={folder}/checkpoints/last.ckpt")
    assert point.run is None and point.checkpoint == folder / "checkpoints" / "last.ckpt"
