"""The promotion gate against a temporary MLflow registry, and the pipeline's resume logic."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import compose_stage
from mlflow import MlflowClient

from scripts import pipeline as pipeline_module
from tracking.registry import CANDIDATE, CHAMPION, promote

TOLERANCES = {"gate": 0.005, "mae": 0.2, "accuracy": 0.005, "slice_ratio": 0.05}
NAME = "childsafe-test-age"


def _version(client: MlflowClient, upper18: float, mae: float, ratio: float) -> str:
    tags = {
        "task": "age",
        "headline.name": "mae",
        "headline.value": str(mae),
        "worst_slice_ratio": str(ratio),
        "gate.gate18.miss_rate_upper": str(upper18),
        "gate.gate13.miss_rate_upper": "0.004",
    }
    version = client.create_model_version(NAME, source="file:///dev/null", tags=tags).version
    client.set_registered_model_alias(NAME, CANDIDATE, version)
    return version


def test_first_candidate_becomes_champion_then_worse_is_refused_and_better_accepted(tracking_uri):
    client = MlflowClient(tracking_uri)
    client.create_registered_model(NAME)
    first = _version(client, upper18=0.010, mae=3.3, ratio=1.15)
    assert promote(NAME, TOLERANCES) == (True, [])
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == first

    _version(client, upper18=0.030, mae=3.2, ratio=1.10)  # lets more 17-year-olds through the 18 gate
    promoted, table = promote(NAME, TOLERANCES)
    assert not promoted
    assert [row.criterion for row in table if row.worse] == ["gate.gate18.miss_rate_upper"]
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == first

    better = _version(client, upper18=0.008, mae=3.0, ratio=1.12)
    promoted, table = promote(NAME, TOLERANCES)
    assert promoted and not any(row.worse for row in table)
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == better
    assert json.loads(client.get_model_version(NAME, better).tags["promotion"]) == {"promoted": True, "against": first}


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
