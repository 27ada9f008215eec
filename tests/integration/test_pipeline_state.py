"""The pipeline knows what it ran: each stage is keyed by its composed config (and train by its data
files); a change re-runs that stage and every later one and says why; direct overrides find their stage.

The state tests replace the stage processes with a recorder (the keys are composed by the pipeline
itself, without running anything). The smoke tests run the real chain for both synthetic experiments.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from core.errors import WorkbenchError
from core.hydra_app import register_resolvers, validate
from evaluation.glossary import entries_for
from scripts import pipeline as pipeline_entry
from tracking import pipeline as pipeline_module

STAGES = ["train", "calibrate", "evaluate", "export", "promote"]


@pytest.fixture
def recorder(monkeypatch):
    """Stage processes that only record their stage and arguments, and succeed."""
    calls: list[tuple[str, list[str]]] = []

    def fake_run(command, **kwargs):
        calls.append((command[3], command[4:]))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(pipeline_module.subprocess, "run", fake_run)
    return calls


def _pipeline_cfg(tmp_path: Path, *overrides: str):
    register_resolvers()
    folders = [f"paths.log_dir={tmp_path / 'outputs'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    return validate("pipeline", ["experiment_name=age_synthetic", *folders, *overrides])


def _run(cfg, capsys, recorder, *direct: str) -> tuple[list[str], str]:
    recorder.clear()
    pipeline_module.pipeline(cfg, direct=direct)
    return [stage for stage, _ in recorder], capsys.readouterr().out


def test_a_new_signing_key_reruns_export_and_promote_only(tmp_path, recorder, capsys, monkeypatch):
    monkeypatch.delenv("CHILDSAFE_SIGNING_KEY", raising=False)
    cfg = _pipeline_cfg(tmp_path)
    assert _run(cfg, capsys, recorder)[0] == STAGES
    monkeypatch.setenv("CHILDSAFE_SIGNING_KEY", str(tmp_path / "release.key"))  # an unsigned bundle must not stay
    ran, out = _run(cfg, capsys, recorder)
    assert ran == ["export", "promote"]
    assert "export environment changed: signing_key" in out


def test_a_changed_training_override_reruns_every_stage_and_says_why(tmp_path, recorder, capsys):
    cfg = _pipeline_cfg(tmp_path)
    ran, _ = _run(cfg, capsys, recorder, "trainer.max_epochs=2")
    assert ran == STAGES
    assert "trainer.max_epochs=2" in recorder[0][1]  # routed to train, the one stage with that key

    ran, out = _run(cfg, capsys, recorder, "trainer.max_epochs=2")
    assert ran == [] and out.count("already completed with this config") == 5

    ran, out = _run(cfg, capsys, recorder, "trainer.max_epochs=2", "model.optimizer.lr=0.01")
    assert ran == STAGES
    assert "train config changed: model.optimizer.lr" in out
    assert "calibrate: train ran, so every later stage runs too" in out

    ran, out = _run(
        cfg, capsys, recorder, "trainer.max_epochs=2", "model.optimizer.lr=0.01", "calibration.age.mondrian=true"
    )
    assert ran == STAGES[1:]  # train unchanged: skipped; calibrate changed: it and everything after
    assert "calibrate config changed: calibration.age.mondrian" in out
    state = json.loads((pipeline_module.state_folder(cfg) / "state.json").read_text())
    assert state["completed"] == STAGES
    assert state["stages"]["calibrate"]["config"]["calibration"]["age"]["mondrian"] is True


def test_a_failed_stage_leaves_later_stages_to_rerun(tmp_path, recorder, capsys, monkeypatch):
    cfg = _pipeline_cfg(tmp_path)
    _run(cfg, capsys, recorder)

    def fail_calibrate(command, **kwargs):
        recorder.append((command[3], command[4:]))
        return subprocess.CompletedProcess(command, 1 if command[3] == "calibrate" else 0)

    monkeypatch.setattr(pipeline_module.subprocess, "run", fail_calibrate)
    with pytest.raises(WorkbenchError, match=r"Stage 'calibrate' .* resumes at 'calibrate'"):
        pipeline_module.pipeline(cfg, direct=("model.optimizer.lr=0.01",))
    state = json.loads((pipeline_module.state_folder(cfg) / "state.json").read_text())
    assert state["completed"] == ["train"]  # the old evaluate/export/promote records no longer hold


def test_direct_overrides_find_their_stage_and_ambiguous_ones_are_refused(tmp_path):
    cfg = _pipeline_cfg(tmp_path)
    routed = pipeline_module.route(
        cfg, ["debug=smoke", "trainer.max_epochs=3", "calibration.age.mondrian=true", f"export.release_dir={tmp_path}"]
    )
    assert routed["train"] == ["debug=smoke", "trainer.max_epochs=3"]
    assert routed["calibrate"] == ["calibration.age.mondrian=true"]
    assert routed["export"] == [f"export.release_dir={tmp_path}"]
    smoke = pipeline_module.stage_arguments(cfg, "calibrate", routed)
    assert "calibration.age.max_minor_pass_rate=0.5" in smoke  # what debug=smoke implies for calibrate
    assert smoke[-1] == "calibration.age.mondrian=true"  # the user's own override comes last and wins
    with pytest.raises(
        WorkbenchError, match=r"'train_task' is a config key of calibrate, evaluate, export.*overrides\.calibrate="
    ):
        pipeline_module.route(cfg, ["train_task=other"])
    licensed = _pipeline_cfg(tmp_path, "experiment_name=age_utkface")
    assert pipeline_module.route(licensed, [f"data.root={tmp_path}"])["train"] == [f"data.root={tmp_path}"]
    with pytest.raises(WorkbenchError, match=r"train stage: Unknown config key 'data.root'"):
        pipeline_module.route(cfg, ["data.root=/d"])  # synthetic data has no root
    with pytest.raises(
        WorkbenchError, match=r"train stage: Unknown config key 'trainer.max_epochz'. Did you mean trainer.max_epochs"
    ):
        pipeline_module.route(cfg, ["trainer.max_epochz=3"])
    own, direct = pipeline_module.split_arguments(
        ["experiment=age_synthetic", "fresh=true", "overrides.train=[a=1]", "data.root=/d"]
    )
    assert own == ["experiment_name=age_synthetic", "fresh=true", "overrides.train=[a=1]"] and direct == [
        "data.root=/d"
    ]


def test_an_unwritable_release_dir_stops_the_pipeline_before_training(tmp_path, recorder):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    with pytest.raises(WorkbenchError, match=r"export.release_dir=.*a-file/releases is not writable"):
        pipeline_module.pipeline(_pipeline_cfg(tmp_path), direct=(f"export.release_dir={blocker / 'releases'}",))
    assert recorder == []


def test_the_data_fingerprint_notices_changed_files(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    cfg = OmegaConf.create({"data": {"root": str(tmp_path)}})
    before = pipeline_module.data_fingerprint(cfg)
    assert before == pipeline_module.data_fingerprint(cfg)
    (tmp_path / "b.jpg").write_bytes(b"y")
    assert pipeline_module.data_fingerprint(cfg) != before
    assert pipeline_module.data_fingerprint(OmegaConf.create({"data": {"generator": {}}})) is None
    record = {"config": {"data": {"root": "r"}}, "data": before}
    assert "train data changed" in pipeline_module.why_run(
        "train", record, {"config": record["config"], "data": "other"}
    )


@pytest.mark.parametrize("experiment", ["age_synthetic", "content_synthetic"])
def test_the_whole_smoke_pipeline_completes(
    tmp_path, shared_cache, tracking_uri, stages_in_process, monkeypatch, capsys, experiment
):
    """`childsafe pipeline experiment=<each> debug=smoke`: relaxed targets, published, promotion refused as expected."""
    releases = tmp_path / "releases"
    monkeypatch.setattr(sys, "argv", [
        "pipeline", f"experiment={experiment}", "debug=smoke",
        f"paths.log_dir={tmp_path / 'outputs'}", f"paths.cache_dir={shared_cache}", f"export.release_dir={releases}",
    ])  # fmt: skip
    pipeline_entry.main()
    out = capsys.readouterr().out
    assert "pipeline complete" in out and "promote refused, as it must for a debug=smoke run" in out
    state = json.loads((tmp_path / "outputs" / "pipeline" / experiment / "state.json").read_text())
    assert state["completed"] == STAGES
    contract = json.loads((releases / f"childsafe-{experiment}" / "contract.json").read_text())
    assert contract["release"]["debug_run"] is True
    targets = [p["guarantee"]["target_max_miss_rate"] for p in contract["operating_points"]]
    assert targets and all(t == 0.5 for t in targets)  # the relaxed smoke targets, stated on every point
    client = MlflowClient(tracking_uri)
    version = client.get_model_version_by_alias(f"childsafe-{experiment}", "candidate")
    assert version.tags["release.debug_run"] == "true"
    assert json.loads(version.tags["promotion"])["promoted"] is False
    assert_every_key_has_one_meaning(client)


def assert_every_key_has_one_meaning(client: MlflowClient) -> None:
    """Each logged metric key has one glossary entry naming the stage that logged it, and a key that several
    runs of one pipeline log has the same value in each (one meaning: the same model on the same split)."""
    values: dict[str, dict[str, float]] = {}
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
        stage = run.data.tags["stage"]
        for key, value in run.data.metrics.items():
            entries = entries_for(key)
            assert len(entries) == 1, f"{stage} logs {key!r}, which matches {len(entries)} glossary entries"
            assert stage in entries[0].stages, f"{stage} logs {key!r}; the glossary says only {entries[0].stages} do"
            values.setdefault(key, {})[stage] = value
    assert values["test/" + ("age/mae" if "test/age/mae" in values else "content/accuracy")].keys() == {
        "train", "evaluate", "export"
    }  # fmt: skip
    for key, by_stage in values.items():
        assert max(by_stage.values()) - min(by_stage.values()) <= 1e-6 * max(1.0, *map(abs, by_stage.values())), (
            key,
            by_stage,
        )


def test_a_stage_key_does_not_depend_on_the_run_folder(tmp_path):
    """Under `childsafe pipeline`, `${hydra:runtime.output_dir}` resolves to a new folder on each run: the keys
    that point into it (trainer.default_root_dir, the logger's and heartbeat's run_dir) must not re-run a stage."""
    cfg = _pipeline_cfg(tmp_path)
    composed = pipeline_module.compose_stage("train", tuple(pipeline_module.stage_arguments(cfg, "train")))
    keys = []
    for run in ("2026-12-03_10-00-00", "2026-12-03_11-00-00"):
        this_run = OmegaConf.create(OmegaConf.to_container(composed, resolve=False))
        this_run.paths.output_dir = str(tmp_path / "outputs" / run)  # what the Hydra runtime would resolve
        keys.append(pipeline_module.stage_config(this_run))
    assert keys[0] == keys[1]
    assert keys[0]["trainer"]["default_root_dir"] == pipeline_module.OUTPUT_DIR
