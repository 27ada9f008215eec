"""The pipeline's resume logic, and a refused promotion failing the real `childsafe promote` and the pipeline.

The promotion rules themselves are tested against a SQLite registry in tests/unit/test_promotion.py.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from mlflow import MlflowClient
from stage_configs import compose_stage

from core.hydra_app import StageApp
from tracking import pipeline as pipeline_module
from tracking.registry import CANDIDATE, CHAMPION, PROMOTION_TAG


def test_pipeline_runs_stages_in_order_and_resumes_after_a_failure(tmp_path, shared_cache, monkeypatch):
    calls: list[str] = []
    failing = {"export"}

    def fake_run(command, **kwargs):
        stage = command[3]
        calls.append(stage)
        return subprocess.CompletedProcess(command, 1 if stage in failing else 0)

    monkeypatch.setattr(pipeline_module.subprocess, "run", fake_run)
    cfg = compose_stage(
        "pipeline", tmp_path, shared_cache, "experiment_name=age_synthetic", "overrides.train=['trainer.max_epochs=1']"
    )
    with pytest.raises(Exception, match=r"Stage 'export' of experiment age_synthetic failed.*resumes at 'export'"):
        pipeline_module.pipeline(cfg)
    assert calls == ["train", "calibrate", "evaluate", "export"]

    failing.clear()
    calls.clear()
    assert pipeline_module.pipeline(cfg) == ["train", "calibrate", "evaluate", "export", "promote"]
    assert calls == ["export", "promote"]  # resumed after the last completed stage
    arguments = pipeline_module.stage_arguments(cfg, "train")
    assert arguments[:2] == ["experiment=age_synthetic", f"paths.log_dir={cfg.paths.log_dir}"]
    assert arguments[-1] == "trainer.max_epochs=1"
    assert f"decision_file={pipeline_module.decision_file(cfg)}" in pipeline_module.stage_arguments(cfg, "promote")


def test_a_refused_promotion_fails_the_promote_cli_and_the_pipeline_reports_it(
    tmp_path, shared_cache, tracking_uri, monkeypatch, capsys
):
    name = "childsafe-age_synthetic"
    client = MlflowClient(tracking_uri)
    client.create_registered_model(name)
    # Registered without the figures promotion decides on (as before they were recorded): it must fail closed.
    version = client.create_model_version(name, source="file:///dev/null").version
    client.set_registered_model_alias(name, CANDIDATE, version)
    real_run = subprocess.run
    promote_exit: list[int] = []

    def run_only_promote(command, **kwargs):
        if command[3] != "promote":
            return subprocess.CompletedProcess(command, 0)
        finished = real_run(command, **kwargs)  # the real `childsafe promote`, against this test's registry
        promote_exit.append(finished.returncode)
        return finished

    monkeypatch.setattr(pipeline_module.subprocess, "run", run_only_promote)
    cfg = compose_stage("pipeline", tmp_path, shared_cache, "experiment_name=age_synthetic")
    with pytest.raises(SystemExit) as exit_:
        StageApp(pipeline_module.pipeline)(cfg)
    assert promote_exit == [2] and exit_.value.code == 2
    out, err = capsys.readouterr()
    assert "pipeline complete" not in out
    assert (
        f"age_synthetic: promote refused: the champion stays (v{version} has no 'safety' tag (registered before "
        "promotion recorded its figures); export it again to register it with them)." in err
    )
    state = json.loads((pipeline_module.state_folder(cfg) / "state.json").read_text())
    assert state["completed"] == ["train", "calibrate", "evaluate", "export"]  # a re-run retries promote
    assert CHAMPION not in client.get_registered_model(name).aliases
    assert json.loads(client.get_model_version(name, version).tags[PROMOTION_TAG])["promoted"] is False
