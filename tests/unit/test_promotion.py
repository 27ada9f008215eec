"""Promotion fails closed and leaves a record: the decision rules, and `promote` against a real SQLite registry."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, PERMISSION_DENIED
from stage_configs import compose_stage

from core.errors import WorkbenchError
from core.hydra_app import StageApp
from tracking.mlflow_run import ensure_experiment
from tracking.promote import promote as promote_stage
from tracking.registry import (
    CANDIDATE,
    CHAMPION,
    PROMOTION_TABLE_TAG,
    PROMOTION_TAG,
    SAFETY_TAG,
    absolute_gates,
    compare_versions,
    promote,
    safety_record,
    safety_tags,
)

NAME = "childsafe-test-age"
TOLERANCES = {
    "miss_rate": 0.005,
    "false_alarm_rate": 0.02,
    "near_gate_pass_rate": 0.02,
    "mae": 0.2,
    "accuracy": 0.005,
    "slice_ratio": 0.05,
}
GATES = {"max_target_miss_rate": 0.05, "intended_use": "commercial"}


def _point(name: str, gate: int | None, near_gate: dict[int, float]) -> dict[str, Any]:
    test = {
        "miss_rate": 0.0033,
        "miss_rate_ci_low": 0.0004,
        "miss_rate_ci_high": 0.0118,
        "units": 400,
        "false_alarm_rate": 0.158,
        "false_alarm_rate_ci_low": 0.141,
        "false_alarm_rate_ci_high": 0.176,
        "precision_at_base_rate": 0.21,
    }
    if near_gate:
        test["near_gate"] = [
            {"age": age, "rate": rate, "ci_low": 0.0, "ci_high": rate + 0.06, "units": 45}
            for age, rate in near_gate.items()
        ]
    return {
        "name": name,
        "target": "minor" if gate else name.removeprefix("recall_"),
        "gate": gate,
        "threshold": 0.41,
        "degenerate": False,
        "guarantee": {
            "unit": "subject",
            "target_max_miss_rate": 0.01,
            "confidence": 0.95,
            "calib_units": 300,
            "calib_misses": 0,
            "miss_rate_upper_bound": 0.009937,
            "labels": "observed",
        },
        "test": test,
    }


def contract(task: str = "age") -> dict[str, Any]:
    """A contract as export writes it, for a model that passes every absolute gate."""
    if task == "age":
        headline = {"name": "mae", "value": 3.331234, "ci_low": 3.2, "ci_high": 3.45, "n": 400}
        points = [_point("gate13", 13, {10: 0.0, 11: 0.0222, 12: 0.0444}), _point("gate18", 18, {17: 0.03})]
    else:
        headline = {"name": "accuracy", "value": 0.935, "ci_low": 0.92, "ci_high": 0.95, "n": 250}
        points = [_point("recall_explicit", None, {}), _point("recall_unsafe", None, {})]
    slices = {"skin_tone_bin": {"light": {"value": 3.2}, "dark": {"value": 3.52}, "medium": {"value": 3.3}}}
    return {
        "task": task,
        "metrics": {"headline": headline, "slices": slices},
        "operating_points": points,
        "data": {"name": f"{task}_synthetic", "licence": "synthetic", "digest": "d1g35t", "synthetic": True},
        "release": {"debug_run": False, "allow_degenerate": False, "warnings": []},
    }


def changed(base: dict[str, Any], *edits: tuple[tuple[Any, ...], Any]) -> dict[str, Any]:
    """A copy of `base` with the value at each path (keys and list indices) replaced."""
    result = copy.deepcopy(base)
    for path, value in edits:
        parent = result
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value
    return result


GATE13 = ("operating_points", 0)
FALSE_ALARM_13 = ((*GATE13, "test", "false_alarm_rate"), 0.19)  # rejects more 13+ year-olds
AGE12_PASSES = ((*GATE13, "test", "near_gate", 2, "rate"), 0.0889)  # T-1: twice the twelve-year-olds pass
SMOKE = (("release", "debug_run"), True)


def worse_criteria(candidate: dict[str, Any], champion: dict[str, Any]) -> list[str]:
    rows = compare_versions(safety_record(candidate), safety_record(champion), TOLERANCES)
    return [row.criterion for row in rows if row.worse]


def failed_gates(candidate: dict[str, Any], **gates: Any) -> list[str]:
    return [check.gate for check in absolute_gates(safety_record(candidate), GATES | gates) if not check.passed]


def test_safety_tags_are_rounded_with_units_and_keep_the_exact_figures_in_strict_json():
    tags = safety_tags(contract())
    assert tags["headline.mae_years"] == "3.33"
    assert tags["gate13.test_age12_pass_rate_pct"] == "4.44"
    assert tags["gate13.certified_miss_rate_upper_pct"] == "0.99"
    assert tags["gate13.test_false_alarm_rate_pct"] == "15.80"
    assert (tags["gate13.certified_unit"], tags["gate13.certified_calib_units"]) == ("subject", "300")
    assert tags["worst_slice_ratio"] == "1.100"
    unmeasured = changed(contract(), (("metrics", "slices", "skin_tone_bin", "medium", "value"), None))
    assert safety_tags(unmeasured)["worst_slice_ratio"] == "n/a"  # never left out, which would look fairer
    assert worse_criteria(unmeasured, contract()) == ["worst slice ratio"]
    exact = json.loads(tags[SAFETY_TAG], parse_constant=lambda name: pytest.fail(f"non-finite {name} in the tag"))
    assert exact["headline"]["value"] == 3.331234
    assert exact["points"]["gate13"]["near_gate"] == {"10": 0.0, "11": 0.0222, "12": 0.0444}
    assert exact["points"]["gate13"]["miss_rate_upper_bound"] == 0.009937
    assert tags["gate13.test_precision_at_base_rate_pct"] == "21.00"
    assert (
        safety_tags(changed(contract(), ((*GATE13, "test", "false_alarm_rate"), None)))[
            "gate13.test_false_alarm_rate_pct"
        ]
        == "n/a"
    )


def test_only_the_figure_that_got_worse_is_named_each_in_its_own_direction():
    champion = contract()
    assert worse_criteria(champion, champion) == []
    assert worse_criteria(changed(champion, FALSE_ALARM_13), champion) == ["gate13: test false-alarm rate"]
    assert worse_criteria(changed(champion, AGE12_PASSES), champion) == ["gate13: test pass rate at age 12"]
    assert worse_criteria(changed(champion, ((*GATE13, "test", "miss_rate_ci_high"), 0.02)), champion) == [
        "gate13: test miss-rate upper bound"
    ]
    lower_mae = changed(champion, (("metrics", "headline", "value"), 2.9))
    assert worse_criteria(lower_mae, champion) == [] and worse_criteria(champion, lower_mae) == ["headline mae"]
    wider_gap = changed(champion, (("metrics", "slices", "skin_tone_bin", "dark", "value"), 3.9))
    assert worse_criteria(wider_gap, champion) == ["worst slice ratio"]
    content = contract("content")
    less_accurate = changed(content, (("metrics", "headline", "value"), 0.92))
    assert worse_criteria(less_accurate, content) == ["headline accuracy"]
    assert worse_criteria(content, less_accurate) == []  # higher accuracy is better, not worse


def test_a_null_or_dropped_figure_fails_closed_and_a_new_one_is_only_shown():
    champion = contract()
    unmeasured = changed(champion, ((*GATE13, "test", "near_gate", 0, "rate"), None))
    assert worse_criteria(unmeasured, champion) == ["gate13: test pass rate at age 10"]
    assert worse_criteria(champion, unmeasured) == ["gate13: test pass rate at age 10"]
    without_gate18 = changed(champion, (("operating_points",), champion["operating_points"][:1]))
    dropped = worse_criteria(without_gate18, champion)
    assert dropped == [
        "gate18: test miss-rate upper bound",
        "gate18: test false-alarm rate",
        "gate18: test pass rate at age 17",
    ]
    rows = compare_versions(safety_record(champion), safety_record(without_gate18), TOLERANCES)
    added = [row for row in rows if row.champion is None]
    assert len(added) == 3 and {(row.worse, row.rule) for row in added} == {
        (False, "new: the champion has no such figure")
    }
    assert worse_criteria(contract("content"), champion)  # another task shares no figure: refused


BOUND_13 = (*GATE13, "guarantee", "miss_rate_upper_bound")
LICENSED = {"name": "utkface", "licence": "UTKFace-non-commercial-research", "digest": "x", "synthetic": False}
RESEARCH_ONLY = (("data",), LICENSED | {"card": {"permitted_uses": ["research"]}})


@pytest.mark.parametrize(
    ("edits", "gates", "failed"),
    [
        pytest.param([], {}, [], id="passes"),
        pytest.param([SMOKE], {}, ["trained without a debug config"], id="smoke"),
        pytest.param([(BOUND_13, 0.0109)], {}, ["gate13: certified miss-rate bound within its target"], id="bound"),
        pytest.param([(BOUND_13, None)], {}, ["gate13: certified miss-rate bound within its target"], id="null"),
        pytest.param(
            [((*GATE13, "guarantee", "target_max_miss_rate"), 0.3), (BOUND_13, 0.25)],
            {},
            ["gate13: target within the registry's ceiling"],
            id="relaxed-target",
        ),
        pytest.param(
            [((*GATE13, "test", "miss_rate_ci_low"), 0.012)],
            {},
            ["gate13: test miss-rate interval admits the target"],
            id="test-above-target",
        ),
        pytest.param([((*GATE13, "degenerate"), True)], {}, ["gate13: not degenerate"], id="degenerate"),
        pytest.param([RESEARCH_ONLY], {}, ["data permits 'commercial' use"], id="research-card"),
        pytest.param([RESEARCH_ONLY], {"intended_use": "research"}, [], id="research-registry"),
        pytest.param([(("data", "synthetic"), False)], {}, ["data permits 'commercial' use"], id="no-card"),
    ],
)
def test_absolute_gates_refuse_each_failure_by_name(edits, gates, failed):
    assert failed_gates(changed(contract(), *edits), **gates) == failed


def _stream(kind: str, low: float, high: float) -> tuple[tuple[str], dict[str, Any]]:
    """A certified stream policy whose one test figure has the interval (low, high)."""
    figure = {"value": (low + high) / 2, "ci_low": low, "ci_high": high, "n": 400}
    if kind == "age":
        section = {"policy": {"method": "mean_logit"}, "certificate": {"max_minor_pass_rate": 0.01}}
        section |= {"gates": [{"gate": 16.0, "test": {"minor_pass_rate": figure}}]}
    else:
        section = {"policy": {"method": "k_of_n"}, "certificate": {"deadline_s": 5.0, "min_recall": 0.9}}
        section |= {"test": {"deadline_recall": {"5s": figure}}}
    return ("stream",), {"certified": True, **section}


@pytest.mark.parametrize(
    ("stream", "failed"),
    [
        pytest.param(_stream("age", 0.005, 0.0295), [], id="age-interval-contains-target"),
        pytest.param(_stream("age", 0.012, 0.03), ["age stream gate 16: test interval admits the target"], id="age"),
        pytest.param(_stream("content", 0.85, 0.95), [], id="content-interval-contains-target"),
        pytest.param(
            _stream("content", 0.7, 0.85), ["content stream recall: test interval admits the target"], id="content"
        ),
    ],
)
def test_a_stream_policy_whose_test_interval_excludes_its_target_is_refused(stream, failed):
    assert failed_gates(changed(contract(), stream)) == failed


def test_a_stream_figure_test_did_not_measure_is_refused_and_old_versions_without_streams_pass():
    path, section = _stream("age", 0.005, 0.0295)
    section["gates"][0]["test"]["minor_pass_rate"] = {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    assert failed_gates(changed(contract(), (path, section))) == ["age stream gate 16: test interval admits the target"]
    record = safety_record(contract())
    del record["streams"]  # a version registered before the stream gates
    assert all(check.passed for check in absolute_gates(record, GATES))


# --- against a real SQLite registry ---


def register(client: MlflowClient, version_contract: dict[str, Any], run_id: str | None = None) -> str:
    """A version as export registers it (its safety tags), aliased `candidate`."""
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    version = client.create_model_version(NAME, "file:///dev/null", run_id=run_id, tags=safety_tags(version_contract))
    client.set_registered_model_alias(NAME, CANDIDATE, version.version)
    return version.version


def champion_version(client: MlflowClient) -> str | None:
    return client.get_registered_model(NAME).aliases.get(CHAMPION)


def promotion_tag(client: MlflowClient, version: str) -> dict[str, Any] | None:
    text = client.get_model_version(NAME, version).tags.get(PROMOTION_TAG)
    return None if text is None else json.loads(text)


def test_a_first_champion_passes_the_absolute_gates_and_its_decision_is_recorded_on_its_run(tracking_uri):
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(ensure_experiment(tracking_uri, "childsafe-test")).info.run_id
    first = register(client, contract(), run_id=run_id)
    decision = promote(NAME, TOLERANCES, GATES)
    assert decision.promoted and decision.against is None and champion_version(client) == first
    record = promotion_tag(client, first)
    assert (record["promoted"], record["against"]) == (True, None)
    assert record["reasons"] == ["first champion: nothing to compare", "every absolute gate passed"]
    assert record["time"] == decision.time and record["table"].startswith(f"runs:/{run_id}/promotion/v{first}-")
    (artefact,) = client.list_artifacts(run_id, "promotion")
    table = Path(client.download_artifacts(run_id, artefact.path)).read_text()
    assert "promoted to champion" in table and "No champion yet: nothing to compare." in table
    assert "| gate13: certified miss-rate bound within its target | pass | 0.009937 <= 0.01 |" in table
    # The version page tells the decision too: it is appended to the version's description.
    client.update_model_version(NAME, first, description="**PASS: the export's summary**")
    second = register(client, contract(), run_id=run_id)
    promote(NAME, TOLERANCES, GATES)
    assert client.get_model_version(NAME, first).description.startswith("**PASS: the export's summary**")
    described = client.get_model_version(NAME, second).description
    assert f"v{second}: promoted to champion" in described or f"v{second}: not promoted" in described
    assert "| criterion | candidate | champion | verdict | rule |" in described


def test_a_version_without_a_run_keeps_its_table_in_a_tag_and_a_better_candidate_replaces_the_champion(tracking_uri):
    client = MlflowClient(tracking_uri)
    first = register(client, contract())
    promote(NAME, TOLERANCES, GATES)
    assert "No champion yet" in client.get_model_version(NAME, first).tags[PROMOTION_TABLE_TAG]
    better = register(client, changed(contract(), (("metrics", "headline", "value"), 3.0)))
    decision = promote(NAME, TOLERANCES, GATES)
    assert decision.promoted and champion_version(client) == better
    assert promotion_tag(client, better)["against"] == first
    assert "| headline mae | 3 | 3.331 | ok |" in client.get_model_version(NAME, better).tags[PROMOTION_TABLE_TAG]


@pytest.mark.parametrize(
    ("edit", "criterion"),
    [(FALSE_ALARM_13, "gate13: test false-alarm rate"), (AGE12_PASSES, "gate13: test pass rate at age 12")],
    ids=["false-alarm-rate-only", "age-T-1-only"],
)
def test_a_candidate_worse_on_one_figure_only_is_refused_and_the_refusal_recorded(tracking_uri, edit, criterion):
    client = MlflowClient(tracking_uri)
    first = register(client, contract())
    promote(NAME, TOLERANCES, GATES)
    worse = register(client, changed(contract(), edit, (("metrics", "headline", "value"), 2.5)))  # better MAE
    decision = promote(NAME, TOLERANCES, GATES)
    assert not decision.promoted and champion_version(client) == first
    assert [row.criterion for row in decision.table if row.worse] == [criterion]
    record = promotion_tag(client, worse)
    assert (record["promoted"], record["against"]) == (False, first)
    assert record["reasons"] == [next(row.reason() for row in decision.table if row.worse)]
    assert record["reasons"][0].startswith(f"{criterion} is worse: ")


def test_a_smoke_trained_first_candidate_is_refused_by_the_absolute_gates_and_the_stage_exits_non_zero(
    tracking_uri, tmp_path, shared_cache
):
    client = MlflowClient(tracking_uri)
    smoke = register(client, changed(contract(), SMOKE))
    decision_file = tmp_path / "decision.json"
    cfg = compose_stage("promote", tmp_path, shared_cache, f"model_name={NAME}", f"decision_file={decision_file}")
    with pytest.raises(SystemExit) as exit_:
        StageApp(promote_stage)(cfg)
    assert exit_.value.code == 2 and champion_version(client) is None
    record = promotion_tag(client, smoke)
    assert (record["promoted"], record["against"]) == (False, None)
    assert record["reasons"] == [
        "trained without a debug config: debug run true: it was trained with a debug config such as debug=smoke; "
        "train without one"
    ]
    assert json.loads(decision_file.read_text())["reasons"] == record["reasons"]


def test_a_tracking_error_during_the_champion_lookup_moves_nothing_and_fails_the_stage(
    tracking_uri, tmp_path, shared_cache, monkeypatch
):
    client = MlflowClient(tracking_uri)
    first = register(client, contract())
    promote(NAME, TOLERANCES, GATES)
    better = register(client, changed(contract(), (("metrics", "headline", "value"), 3.0)))
    lookup = MlflowClient.get_model_version_by_alias

    def server_error_for_the_champion(self: MlflowClient, name: str, alias: str):
        if alias == CHAMPION:
            raise MlflowException("502 Bad Gateway", error_code=INTERNAL_ERROR)
        return lookup(self, name, alias)

    monkeypatch.setattr(MlflowClient, "get_model_version_by_alias", server_error_for_the_champion)
    expected = rf"'{NAME}' stopped while looking up its 'champion'.*INTERNAL_ERROR \(502 Bad Gateway\)\. Nothing moved"
    with pytest.raises(WorkbenchError, match=expected):
        promote(NAME, TOLERANCES, GATES)
    cfg = compose_stage("promote", tmp_path, shared_cache, f"model_name={NAME}")
    with pytest.raises(SystemExit) as exit_:
        StageApp(promote_stage)(cfg)
    assert exit_.value.code == 2
    monkeypatch.undo()
    assert champion_version(client) == first and promotion_tag(client, better) is None


def test_an_unreadable_registry_is_never_read_as_having_no_champion(tracking_uri, monkeypatch):
    client = MlflowClient(tracking_uri)
    first = register(client, contract())
    with pytest.raises(MlflowException) as missing:
        client.get_model_version_by_alias(NAME, CHAMPION)
    assert missing.value.error_code == "INVALID_PARAMETER_VALUE"  # MLflow's code for a missing alias, and for bad input

    def denied(self: MlflowClient, name: str):
        raise MlflowException("no read permission on this model", error_code=PERMISSION_DENIED)

    monkeypatch.setattr(MlflowClient, "get_registered_model", denied)
    with pytest.raises(WorkbenchError, match=r"stopped while reading its aliases.*PERMISSION_DENIED.*Nothing moved"):
        promote(NAME, TOLERANCES, GATES)
    monkeypatch.undo()
    assert champion_version(client) is None and promotion_tag(client, first) is None


def test_a_failed_alias_move_leaves_a_record_that_says_nothing_moved(tracking_uri, monkeypatch):
    client = MlflowClient(tracking_uri)
    first = register(client, contract())
    promote(NAME, TOLERANCES, GATES)
    better = register(client, changed(contract(), (("metrics", "headline", "value"), 3.0)))

    def unavailable(self: MlflowClient, name: str, alias: str, version: str):
        raise MlflowException("503 Service Unavailable", error_code=INTERNAL_ERROR)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", unavailable)
    with pytest.raises(WorkbenchError, match=r"moving 'champion' to v2"):
        promote(NAME, TOLERANCES, GATES)
    monkeypatch.undo()
    assert champion_version(client) == first
    record = promotion_tag(client, better)
    assert record["promoted"] is False and record["reasons"][-1] == "moving 'champion' failed"


def test_a_contract_without_operating_points_meets_no_absolute_gate_vacuously():
    assert failed_gates(changed(contract(), (("operating_points",), []))) == ["certified operating points"]
    assert "certified operating points" not in failed_gates(contract())
