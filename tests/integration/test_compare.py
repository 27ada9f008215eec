"""`childsafe compare` for reviewers, against a SQLite store laid out as the real stages lay it out.

Each side is a lineage: a train run, a calibrate run under it, and under that calibrate run an
evaluate run and an export run whose registered version carries an alias. The champion's train run
has a second, newer calibration with its own evaluate run, so resolving a version must follow the
export's calibration, not take the newest evaluate run.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from rich.console import Console
from stage_configs import compose_stage

from core.errors import WorkbenchError
from evaluation.evaluate import log_figures
from evaluation.glossary import metrics_table
from evaluation.stats import Estimate, not_measurable
from tracking import compare as compare_module
from tracking.mlflow_run import stage_run
from tracking.registry import CANDIDATE, CHAMPION

NAME = "childsafe-age_synthetic"
REPO = Path(__file__).resolve().parents[2]
AGE_FIGURES = {
    "mae": 4.0,
    "gate18/minor_pass_rate": 0.02,
    "gate18/adult_false_rejection": 0.10,
    "gate18/pass_rate_age17": 0.05,
    "disparity/sex/mae_ratio": 1.10,
    "disparity/skin/mae_ratio": 1.20,
}
CRITERIA = [
    "headline mae",
    "gate18: test miss-rate upper bound",
    "gate18: test false-alarm rate",
    "gate18: test pass rate at age 17",
    "worst slice ratio",
]


def with_intervals(prefix: str, figures: dict[str, float], half_width: float = 0.01) -> pd.DataFrame:
    """An evaluate run's metrics table: each value with its 95% interval."""
    return metrics_table(
        {
            f"{prefix}/{key}": Estimate(value, value - half_width, value + half_width, 100)
            for key, value in figures.items()
        }
    )


def age_metrics(worse_by: float) -> pd.DataFrame:
    """Every age safety figure `worse_by` higher (all of them: higher is worse), plus figures that are no criterion."""
    figures = {key: value + worse_by for key, value in AGE_FIGURES.items()}
    return pd.concat([with_intervals("test/age", figures), metrics_table({
        "test/age/gate18/challenge_age18/minor_pass_rate": Estimate(0.3),
        "test/age/gate16/minor_pass_rate": not_measurable("no minors"),
    })])  # fmt: skip


def lineage(client: MlflowClient, experiment_id: str, metrics: pd.DataFrame) -> dict[str, str]:
    """train -> calibrate -> (evaluate, export), tagged by the real `stage_run`; returns the run ids by stage."""
    train = client.create_run(experiment_id, tags={"stage": "train", "task": "age_synthetic"}).info.run_id
    client.set_terminated(train)
    ids = {"train": train}
    with stage_run("calibrate", train, "age", "age_synthetic") as (_, ids["calibrate"]):
        pass
    time.sleep(0.01)  # distinct start times: the newest evaluate run is the one compared, and logged to
    with stage_run("evaluate", ids["calibrate"], "age", "age_synthetic") as (_, ids["evaluate"]):
        log_figures(client, ids["evaluate"], metrics)
    with stage_run("export", ids["calibrate"], "age", "age_synthetic") as (_, ids["export"]):
        pass
    return ids


def registered(client: MlflowClient, export_run: str, alias: str) -> str:
    version = client.create_model_version(NAME, "file:///dev/null", run_id=export_run).version
    client.set_registered_model_alias(NAME, alias, version)
    return version


@pytest.fixture
def store(tracking_uri: str):
    """A champion (v1) and a candidate built by `build(candidate_worse_by)`; returns (client, build)."""
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("age_synthetic")
    client.create_registered_model(NAME)

    def build(candidate_worse_by: float) -> dict[str, dict[str, str]]:
        champion = lineage(client, experiment_id, age_metrics(0.0))
        champion["version"] = registered(client, champion["export"], CHAMPION)
        # A newer calibration of the champion's train run, evaluated but never exported.
        with stage_run("calibrate", champion["train"], "age", "age_synthetic") as (_, recalibrated):
            pass
        with stage_run("evaluate", recalibrated, "age", "age_synthetic") as (_, champion["newest_evaluate"]):
            log_figures(client, champion["newest_evaluate"], age_metrics(0.5))
        candidate = lineage(client, experiment_id, age_metrics(candidate_worse_by))
        candidate["version"] = registered(client, candidate["export"], CANDIDATE)
        return {"champion": champion, "candidate": candidate}

    return client, build


def verdicts(client: MlflowClient, *references: str) -> dict[str, str]:
    evaluated = [compare_module.resolve(client, reference) for reference in references]
    table = compare_module.comparison_table(evaluated, compare_module.promotion_tolerances())
    return dict(zip(table["criterion"], table["verdict B"], strict=True))


def test_aliases_versions_and_run_ids_resolve_to_the_evaluate_run_of_the_same_calibration(store):
    client, build = store
    runs = build(0.0)
    champion = runs["champion"]

    def resolved(reference: str) -> str:
        return compare_module.resolve(client, reference).run.info.run_id

    assert resolved(f"{NAME}@{CHAMPION}") == champion["evaluate"]  # not the newer recalibration's evaluate run
    assert resolved(f"{NAME}/{champion['version']}") == champion["evaluate"]
    assert resolved(f"{NAME}@{CANDIDATE}") == runs["candidate"]["evaluate"]
    for stage in ("export", "calibrate", "evaluate"):
        assert resolved(champion[stage]) == champion["evaluate"]
    assert resolved(champion["train"]) == champion["newest_evaluate"]

    with pytest.raises(WorkbenchError, match=r"has no alias 'winner'\. Its aliases: candidate \(v2\), champion \(v1\)"):
        resolved(f"{NAME}@winner")
    with pytest.raises(WorkbenchError, match=r"no registered model 'nobody'"):
        resolved("nobody/1")
    untagged = client.create_run(client.get_experiment_by_name("age_synthetic").experiment_id).info.run_id
    with pytest.raises(WorkbenchError, match=rf"run {untagged} is not a childsafe stage run .*Give an evaluate run"):
        resolved(untagged)
    with stage_run("calibrate", champion["train"], "age", "age_synthetic") as (_, unevaluated):
        pass
    with pytest.raises(WorkbenchError, match=rf"`childsafe evaluate calibration_run={unevaluated}`"):
        resolved(unevaluated)


@pytest.mark.parametrize(
    ("worse_by", "verdict"),
    [(0.1, "worse"), (-0.1, "better"), (0.001, "no significant difference"), (0.0, "no significant difference")],
)
def test_every_criterion_is_judged_in_its_own_direction(store, worse_by, verdict):
    client, build = store
    build(worse_by)
    # 0.001 is inside both the intervals' quadrature margin and the miss-rate bound's tolerance (0.005).
    assert verdicts(client, f"{NAME}@{CHAMPION}", f"{NAME}@{CANDIDATE}") == dict.fromkeys(CRITERIA, verdict)


def test_lower_is_worse_for_content_accuracy_and_recall(tracking_uri):
    client = MlflowClient(tracking_uri)
    runs = []
    for accuracy, recall, fpr in ((0.80, 0.90, 0.10), (0.90, 0.99, 0.05)):
        with stage_run("evaluate", None, "content", "content_synthetic") as (_, run_id):
            figures = {"accuracy": accuracy, "unsafe/recall": recall, "unsafe/false_alarm_rate": fpr}
            log_figures(client, run_id, with_intervals("test/content", figures, 0.001))
        runs.append(run_id)
    assert verdicts(client, *runs) == {
        "headline accuracy": "better",
        "unsafe: test miss-rate upper bound": "better",
        "unsafe: test false-alarm rate": "better",
        "worst slice ratio": "not comparable",
    }


def test_fewer_than_two_runs_is_an_error_that_says_how_to_give_them(tmp_path, store):
    _, build = store
    build(0.0)
    cfg = compose_stage("compare", tmp_path, tmp_path, f"runs=['{NAME}@{CHAMPION}']")
    with pytest.raises(WorkbenchError, match=r"at least two runs to compare, got 1 .*childsafe compare "):
        compare_module.compare(cfg)


def test_help_answers_without_any_runs():
    finished = subprocess.run(
        [str(REPO / ".venv/bin/childsafe"), "compare", "--help"], capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr
    assert "childsafe compare: Compare evaluate runs" in finished.stdout and "runs: []" in finished.stdout


def test_piped_cli_prints_full_names_and_logs_the_pages_to_the_newer_run(tmp_path, store, tracking_uri):
    client, build = store
    runs = build(0.1)
    command = [str(REPO / ".venv/bin/childsafe"), "compare", f"{NAME}@{CHAMPION}", f"{NAME}@{CANDIDATE}"]
    finished = subprocess.run(
        [*command, f"paths.log_dir={tmp_path / 'outputs'}"],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"MLFLOW_TRACKING_URI": tracking_uri, "COLUMNS": "40"},
    )
    assert finished.returncode == 0, finished.stderr
    assert "…" not in finished.stdout
    table = markdown_rows(finished.stdout)
    assert table[0] == ["criterion", "worse if", "A", "B", "B - A", "verdict B", "rule B"]
    row = ["gate18: test pass rate at age 17", "higher", "0.05 [0.04, 0.06]", "0.15 [0.14, 0.16]", "+0.1", "worse"]
    assert row in [cells[:6] for cells in table]
    newer, older = runs["candidate"]["evaluate"], runs["champion"]["evaluate"]
    assert f"- B: {NAME}@{CANDIDATE} (v2, export run {runs['candidate']['export']} -> evaluate run {newer}," in (
        finished.stdout
    )
    logged = sorted(a.path for a in client.list_artifacts(newer, "comparison"))
    stem = f"comparison/{older[:8]}-vs-{newer[:8]}"
    assert logged == [f"{stem}.html", f"{stem}.md"]
    assert client.list_artifacts(older, "comparison") == []
    page = Path(client.download_artifacts(newer, f"{stem}.html", str(tmp_path)))
    assert "<style>" in page.read_text() and "color:#cf222e'>worse</td>" in page.read_text()
    (written,) = (tmp_path / "outputs" / "compare" / "runs").glob("*/comparison.md")
    assert written.read_text() == Path(client.download_artifacts(newer, f"{stem}.md", str(tmp_path))).read_text()


def markdown_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table row in `text`, stripped of tabulate's padding (separator rows left out)."""
    lines = [line.strip() for line in text.splitlines() if line.startswith("|") and not set(line) <= set("|:- ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_terminal_output_fits_the_width_and_folds_rather_than_cuts(store, monkeypatch):
    client, build = store
    build(0.1)
    evaluated = [compare_module.resolve(client, f"{NAME}@{alias}") for alias in (CHAMPION, CANDIDATE)]
    table = compare_module.comparison_table(evaluated, compare_module.promotion_tolerances())
    for width in (70, 160):
        terminal = Console(force_terminal=True, width=width, record=True, file=io.StringIO())
        monkeypatch.setattr(compare_module, "console", terminal)
        compare_module.show(table, evaluated, "")
        shown = terminal.export_text()
        assert "…" not in shown and max(len(line) for line in shown.splitlines()) <= width
    assert all(f"│ {criterion} " in shown for criterion in CRITERIA)  # wide enough: each name on one line
