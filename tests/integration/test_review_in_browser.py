"""A reviewer's decision in a real browser: two pipelines with different seeds logged to a tracking server,
`childsafe compare` by alias, then the MLflow UI in headless Chromium.

Slow, in the set CI runs (issue 17's acceptance rests on it). Needs Debian's `chromium`; .ci/run
installs it where it is missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from helpers import mlflow_server
from mlflow import MlflowClient
from stage_configs import compose_stage

from scripts import pipeline as pipeline_entry
from tracking import compare as compare_module
from tracking.registry import CANDIDATE, CHAMPION

NAME = "childsafe-age_synthetic"
VERDICTS = {compare_module.BETTER, compare_module.WORSE, compare_module.SAME, compare_module.UNMEASURED}


def rendered_text(browser: str, url: str) -> tuple[str, str]:
    """The page's DOM after its scripts ran (Chromium's --dump-dom), and its visible text on one line."""
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    visible = re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)[^>]*>.*?</\1>", "", dom, flags=re.S))
    return dom, " ".join(visible.split())


@pytest.mark.slow
@pytest.mark.ci
def test_a_reviewer_compares_two_pipelines_and_reads_the_decision_in_the_mlflow_ui(
    tmp_path, shared_cache, stages_in_process, monkeypatch, capsys
):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "this test needs Chromium: apt-get install -y chromium (.ci/run does)"
    with mlflow_server(tmp_path) as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        for seed in (1, 2):
            monkeypatch.setattr(sys, "argv", [
                "pipeline", "experiment=age_synthetic", "debug=smoke", f"seed={seed}",
                f"paths.log_dir={tmp_path / 'outputs'}", f"paths.cache_dir={shared_cache}",
                f"export.release_dir={tmp_path / 'releases'}",
            ])  # fmt: skip
            pipeline_entry.main()
            if seed == 1:  # promotion refuses debug=smoke runs by design: the reviewer makes v1 champion by hand
                MlflowClient(server.url).set_registered_model_alias(NAME, CHAMPION, "1")
        assert capsys.readouterr().out.count("pipeline complete") == 2
        client = MlflowClient(server.url)
        assert client.get_model_version_by_alias(NAME, CANDIDATE).version == "2"

        table = compare_module.compare(
            compose_stage("compare", tmp_path, shared_cache, f"runs=['{NAME}@{CHAMPION}','{NAME}@{CANDIDATE}']")
        )
        assert {"headline mae", "gate13: test miss-rate upper bound", "worst slice ratio"} <= set(table["criterion"])
        assert set(table["verdict B"]) <= VERDICTS and set(table["worse if"]) <= {"higher", "lower"}
        champion, candidate = (compare_module.resolve(client, f"{NAME}@{alias}") for alias in (CHAMPION, CANDIDATE))
        assert champion.run.info.run_id != candidate.run.info.run_id
        pages = [a.path for a in client.list_artifacts(candidate.run.info.run_id, "comparison")]
        assert any(path.endswith(".html") for path in pages)  # logged to the newer run

        experiment, evaluate_run = candidate.run.info.experiment_id, candidate.run.info.run_id
        report_route = f"#/experiments/{experiment}/runs/{evaluate_run}/artifacts/evaluation/report.html"
        train_run = client.get_run(candidate.run.data.tags["lineage.parent_run_id"]).data.tags["lineage.parent_run_id"]
        report = Path(client.download_artifacts(evaluate_run, "evaluation/report.html", str(tmp_path))).read_text()
        assert f'<a href="{server.url}/#/experiments/{experiment}/runs/{train_run}">{train_run}</a>' in report
        # The second pipeline's evaluation is judged against the champion on top of its report.
        assert report.index("Safety scorecard") < report.index('id="versus-champion"') < report.index("Headline")
        assert f"Against the champion {NAME}@{CHAMPION} (v1, " in report and "headline mae" in report

        # The evaluate run: its description leads with the verdict and links the report.
        dom, text = rendered_text(browser, f"{server.url}/#/experiments/{experiment}/runs/{evaluate_run}")
        verdict = re.search(r"Safety verdict: (PASS|FAIL)", text)
        assert verdict, text[:3000]
        assert f'href="{server.url}/{report_route}"' in dom, "the description's report link"
        assert "test/age/mae" in text and "test/age/mae_ci_low" not in text  # values as metrics, intervals in tables
        assert f"Against the champion {NAME}@{CHAMPION}" in text

        # The model version: its description says what it is, its verdict and where its runs and report are.
        dom, text = rendered_text(browser, f"{server.url}/#/models/{NAME}/versions/2")
        verdict_line = candidate.run.data.tags["mlflow.note.content"].splitlines()[0].strip("*")
        assert verdict_line.startswith(verdict.group(0))
        assert "an ONNX bundle (contract schema" in text and verdict_line.removeprefix("Safety verdict: ") in text
        assert f'href="{server.url}/{report_route}"' in dom and "evaluate run" in text

        # MLflow's compare page for the two evaluate runs, and our comparison page logged beside them.
        runs = urllib.parse.quote(json.dumps([champion.run.info.run_id, evaluate_run]))
        _, text = rendered_text(browser, f'{server.url}/#/compare-runs?runs={runs}&experiments=["{experiment}"]')
        for run in (champion.run, candidate.run):
            assert run.info.run_name in text, (run.info.run_name, text[:3000])
        page = next(path for path in pages if path.endswith(".html"))
        _, text = rendered_text(browser, Path(client.download_artifacts(evaluate_run, page, str(tmp_path))).as_uri())
        assert "headline mae" in text and any(v in text for v in VERDICTS)
