"""The MLflow model registry: bundles registered as `candidate`; `champion` moves only through the safety gates.

Promotion fails closed. It reads nothing but the registry: each version's `safety` tag holds the
contract's figures at full precision, written at registration, so what it compares is what was
certified. A tracking error, a figure it cannot read (null, or missing) or a gate it cannot show
passed counts as a refusal, and every decision is recorded on the candidate before the alias moves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import WorkbenchError
from evaluation.shortfalls import CertifiedFigure, stream_figures
from tracking.mlflow_run import default_tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CANDIDATE, CHAMPION = "candidate", "champion"
SAFETY_TAG, PROMOTION_TAG, PROMOTION_TABLE_TAG = "safety", "promotion", "promotion.table"
HEADLINE_UNITS = {"mae": ("years", 1.0), "accuracy": ("pct", 100.0)}


def safety_record(contract: dict[str, Any]) -> dict[str, Any]:
    """The exact figures promotion decides on; nulls stay null so that promotion can refuse them by name."""
    headline, data = contract["metrics"]["headline"], contract["data"]
    return {
        "task": contract["task"],
        "headline": {"name": headline["name"], "value": headline["value"]},
        "worst_slice_ratio": worst_slice_ratio(contract),
        "points": {point["name"]: _point_record(point) for point in contract["operating_points"]},
        "streams": [asdict(figure) for figure in stream_figures(contract)],
        "debug_run": contract["release"]["debug_run"],
        "data": {
            "synthetic": data["synthetic"],
            "permitted_uses": data["card"]["permitted_uses"] if "card" in data else None,
        },
    }


def _point_record(point: dict[str, Any]) -> dict[str, Any]:
    guarantee, test = point["guarantee"], point["test"]
    return {
        "unit": guarantee["unit"],
        "calib_units": guarantee["calib_units"],
        "target_max_miss_rate": guarantee["target_max_miss_rate"],
        "miss_rate_upper_bound": guarantee["miss_rate_upper_bound"],
        "test_miss_rate": test["miss_rate"],
        "test_miss_rate_ci_low": test["miss_rate_ci_low"],
        "test_miss_rate_ci_high": test["miss_rate_ci_high"],
        "test_false_alarm_rate": test["false_alarm_rate"],
        "test_precision_at_base_rate": test["precision_at_base_rate"],
        "degenerate": point["degenerate"],
        "near_gate": {str(year["age"]): year["rate"] for year in test.get("near_gate", [])},
    }


def _rounded(value: float | None, scale: float = 100.0, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


def safety_tags(contract: dict[str, Any]) -> dict[str, str]:
    """The `safety` record for promotion, plus the same figures rounded, units in their names, for people."""
    record = safety_record(contract)
    headline = record["headline"]
    unit, scale = HEADLINE_UNITS[headline["name"]]
    tags = {
        "task": record["task"],
        SAFETY_TAG: json.dumps(record, allow_nan=False, sort_keys=True),
        f"headline.{headline['name']}_{unit}": _rounded(headline["value"], scale),
        "worst_slice_ratio": _rounded(record["worst_slice_ratio"], 1.0, 3),
        "release.debug_run": str(record["debug_run"]).lower(),
    }
    for name, point in record["points"].items():
        tags |= {
            f"{name}.certified_unit": point["unit"],
            f"{name}.certified_calib_units": str(point["calib_units"]),
            f"{name}.target_miss_rate_pct": _rounded(point["target_max_miss_rate"]),
            f"{name}.certified_miss_rate_upper_pct": _rounded(point["miss_rate_upper_bound"]),
            f"{name}.test_miss_rate_pct": _rounded(point["test_miss_rate"]),
            f"{name}.test_miss_rate_upper_pct": _rounded(point["test_miss_rate_ci_high"]),
            f"{name}.test_false_alarm_rate_pct": _rounded(point["test_false_alarm_rate"]),
            f"{name}.test_precision_at_base_rate_pct": _rounded(point["test_precision_at_base_rate"]),
            f"{name}.degenerate": str(point["degenerate"]).lower(),
        }
        tags |= {f"{name}.test_age{age}_pass_rate_pct": _rounded(rate) for age, rate in point["near_gate"].items()}
    return tags


def data_tags(contract: dict[str, Any]) -> dict[str, str]:
    """What the training data permits, on the model version, so a release engineer sees it before deploying."""
    data = contract["data"]
    tags = {
        "data.name": data["name"],
        "data.licence": data["licence"],
        "data.digest": data["digest"],
        "data.synthetic": str(data["synthetic"]).lower(),
    }
    if "card" in data:
        tags |= {
            "data.intended_use": data["intended_use"],
            "data.permitted_uses": ",".join(data["card"]["permitted_uses"]),
        }
    return tags


def worst_slice_ratio(contract: dict[str, Any]) -> float | None:
    """Largest max/min ratio of the headline metric across the values of any attribute (1 = parity).

    None, which promotion refuses, when a slice has no value or a zero one: the ratio cannot say how far apart
    the slices are, and leaving that slice out would make the candidate look fairer than it is.
    """
    ratios = [1.0]
    for values in contract["metrics"]["slices"].values():
        numbers = [v["value"] for v in values.values()]
        if any(number is None or number <= 0 for number in numbers):
            return None
        if len(numbers) > 1:
            ratios.append(max(numbers) / min(numbers))
    return max(ratios)


def register_bundle(run_id: str, bundle: Path, contract: dict[str, Any], model_name: str) -> str:
    """Log the bundle's ONNX model to the run with a signature and register it; alias it `candidate`."""
    import mlflow
    import onnx
    import onnxruntime as ort
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    spec = contract["input"]
    # A v2 graph takes any height and width (null in the contract): the example is at network size.
    example = np.zeros((1, spec["height"] or spec["network_size"], spec["width"] or spec["network_size"], 3), np.uint8)
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    outputs = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, {spec["name"]: example}), strict=True)
    )
    mlflow.set_tracking_uri(default_tracking_uri())
    with mlflow.start_run(run_id=run_id, nested=True):
        info = mlflow.onnx.log_model(
            onnx.load(str(bundle / "model.onnx")),
            name="model",
            signature=infer_signature(example, outputs),
            input_example=example,
            registered_model_name=model_name,
            save_as_external_data=False,
            extra_files=[str(path) for path in sorted(bundle.iterdir()) if path.name != "model.onnx"],
        )
    client = MlflowClient(default_tracking_uri())
    version = str(info.registered_model_version)
    for key, value in (safety_tags(contract) | data_tags(contract)).items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_registered_model_alias(model_name, CANDIDATE, version)
    return version


DESCRIPTION_LIMIT = 5000  # characters: MLflow's model_versions.description column is a String(5000)
CUT = "\n\n(cut here: MLflow keeps 5,000 characters; the full records are the version's tags and run artefacts)"


def set_version_description(client: MlflowClient, model_name: str, version: str, text: str) -> None:
    """Set a version's description, cut to what MLflow stores, saying so rather than failing the stage."""
    if len(text) > DESCRIPTION_LIMIT:
        text = text[: DESCRIPTION_LIMIT - len(CUT)] + CUT
    client.update_model_version(model_name, version, description=text)


@dataclass(frozen=True)
class Figure:
    """One compared figure of a version: its value and which way is worse."""

    value: float | None
    higher_is_worse: bool
    tolerance: str  # its key under `tolerances` in configs/promote.yaml


def figures(record: dict[str, Any]) -> dict[str, Figure]:
    """The figures promotion holds a version to, by criterion; `childsafe compare` judges evaluate runs on the same."""
    name = record["headline"]["name"]
    figures = {f"headline {name}": Figure(record["headline"]["value"], name == "mae", name)}
    for point, values in record["points"].items():
        figures[f"{point}: test miss-rate upper bound"] = Figure(values["test_miss_rate_ci_high"], True, "miss_rate")
        figures[f"{point}: test false-alarm rate"] = Figure(values["test_false_alarm_rate"], True, "false_alarm_rate")
        for age, rate in values["near_gate"].items():
            figures[f"{point}: test pass rate at age {age}"] = Figure(rate, True, "near_gate_pass_rate")
    figures["worst slice ratio"] = Figure(record["worst_slice_ratio"], True, "slice_ratio")
    return figures


def format_figure(value: Any) -> str:
    """A figure as JSON would spell it, floats to 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value)


@dataclass(frozen=True)
class Comparison:
    criterion: str
    candidate: float | None
    champion: float | None
    worse: bool
    rule: str  # why this verdict, in words

    def reason(self) -> str:
        new, old = format_figure(self.candidate), format_figure(self.champion)
        return f"{self.criterion} is worse: {new} against the champion's {old} ({self.rule})"


def worsening(new: Figure, old: Figure) -> float:
    """How much worse `new` is than `old` in the figure's own direction (negative: better); both values measured."""
    return new.value - old.value if new.higher_is_worse else old.value - new.value


def _compare(criterion: str, new: Figure | None, old: Figure | None, tolerances: dict[str, float]) -> Comparison:
    if new is None:
        return Comparison(
            criterion,
            None,
            old.value,
            True,
            "the candidate does not report it; it must keep every figure the champion is held to",
        )
    if old is None:
        return Comparison(criterion, new.value, None, False, "new: the champion has no such figure")
    if new.value is None or old.value is None:
        side = "candidate" if new.value is None else "champion"
        return Comparison(
            criterion, new.value, old.value, True, f"not measured for the {side}, so it cannot be shown not worse"
        )
    tolerance = tolerances[new.tolerance]
    change = worsening(new, old)
    direction = "higher" if new.higher_is_worse else "lower"
    rule = f"{direction} is worse, tolerance tolerances.{new.tolerance}={tolerance:g}"
    return Comparison(criterion, new.value, old.value, change > tolerance, rule)


def compare_versions(
    candidate: dict[str, Any], champion: dict[str, Any], tolerances: dict[str, float]
) -> list[Comparison]:
    """Every figure the champion is held to, and any the candidate adds, each judged in its own direction."""
    new, old = figures(candidate), figures(champion)
    criteria = [*old, *(criterion for criterion in new if criterion not in old)]
    return [_compare(criterion, new.get(criterion), old.get(criterion), tolerances) for criterion in criteria]


@dataclass(frozen=True)
class GateCheck:
    gate: str
    passed: bool
    detail: str

    def reason(self) -> str:
        return f"{self.gate}: {self.detail}"


def _at_most(gate: str, value: float | None, limit: float | None, fix: str) -> GateCheck:
    if value is None or limit is None:
        return GateCheck(
            gate,
            False,
            f"not measured ({format_figure(value)} against {format_figure(limit)}), so it cannot be shown met",
        )
    if value <= limit:
        return GateCheck(gate, True, f"{format_figure(value)} <= {format_figure(limit)}")
    return GateCheck(gate, False, f"{format_figure(value)} > {format_figure(limit)}: {fix}")


def _data_permits(data: dict[str, Any], intended_use: str) -> GateCheck:
    gate = f"data permits '{intended_use}' use"
    uses = data["permitted_uses"]
    if uses is None and data["synthetic"] is True:
        return GateCheck(gate, True, "synthetic data generated by this project")
    if uses is None:
        return GateCheck(
            gate,
            False,
            "licensed data without a card, so nothing says what it permits; add its card under configs/cards/",
        )
    if intended_use in uses:
        return GateCheck(gate, True, f"its card permits {', '.join(uses)}")
    return GateCheck(
        gate,
        False,
        f"its card permits {', '.join(uses) or 'nothing'}, and this registry serves '{intended_use}' "
        "(gates.intended_use); train on data licensed for that use",
    )


def _not_set(gate: str, flag: bool | None, detail: str, fix: str) -> GateCheck:
    """A flag that must be false; a missing one (null) fails."""
    return GateCheck(gate, True, detail) if flag is False else GateCheck(gate, False, f"{detail}: {fix}")


def absolute_gates(record: dict[str, Any], gates: dict[str, Any]) -> list[GateCheck]:
    """What every champion must meet on its own, whatever it replaces (the first one included)."""
    points = record["points"]
    detail = f"{len(points)} in the contract" if points else "none: nothing is certified; calibrate, then export"
    checks = [GateCheck("certified operating points", bool(points), detail)]
    for name, point in record["points"].items():
        target = point["target_max_miss_rate"]
        checks += [
            _at_most(
                f"{name}: certified miss-rate bound within its target",
                point["miss_rate_upper_bound"],
                target,
                "the calib split does not certify this target; recalibrate on more calib data or train a better model",
            ),
            _at_most(
                f"{name}: target within the registry's ceiling",
                target,
                gates["max_target_miss_rate"],
                "the target was relaxed beyond what this registry accepts (gates.max_target_miss_rate); "
                "recalibrate with a stricter target",
            ),
            _at_most(
                f"{name}: test miss-rate interval admits the target",
                point["test_miss_rate_ci_low"],
                target,
                "the whole test interval lies above the certified target, so the certificate does not hold on "
                "the test data; recalibrate on calib data drawn like the test data",
            ),
            _not_set(
                f"{name}: not degenerate",
                point["degenerate"],
                f"degenerate {format_figure(point['degenerate'])}, "
                f"test false-alarm rate {format_figure(point['test_false_alarm_rate'])}",
                "a point that flags nearly everything may ship as a candidate with allow_degenerate, never as "
                "champion; lower its recall target or calibrate on more or cleaner data",
            ),
        ]
    for fields in record.get("streams", []):  # versions registered before stream policies have none
        figure = CertifiedFigure(**fields)
        gate = f"{figure.name}: test interval admits the target"
        if figure.value is None:
            checks.append(GateCheck(gate, False, f"{figure.measured}, so it cannot be shown met"))
        elif figure.contradicted:
            fix = "the stream certificate does not hold on the test streams; recalibrate on streams drawn like them"
            checks.append(GateCheck(gate, False, f"{figure.measured}, the whole interval on the wrong side: {fix}"))
        else:
            checks.append(GateCheck(gate, True, figure.measured))
    checks += [
        _not_set(
            "trained without a debug config",
            record["debug_run"],
            f"debug run {format_figure(record['debug_run'])}",
            "it was trained with a debug config such as debug=smoke; train without one",
        ),
        _data_permits(record["data"], gates["intended_use"]),
    ]
    return checks


@dataclass(frozen=True)
class Decision:
    model_name: str
    version: str
    promoted: bool
    against: str | None  # the champion compared with; None when there was none
    reasons: list[str]
    gates: list[GateCheck]
    table: list[Comparison]
    time: str

    def record(self) -> dict[str, Any]:
        return {"promoted": self.promoted, "against": self.against, "reasons": self.reasons, "time": self.time}

    def explanation(self) -> str:
        stays = f"champion v{self.against} stays" if self.against else "there is still no champion"
        verdict = "promoted to champion" if self.promoted else f"refused, {stays}"
        return f"{self.model_name} v{self.version}: {verdict} ({'; '.join(self.reasons)})"

    def markdown(self) -> str:
        lines = [
            f"# {self.model_name} v{self.version}: {'promoted to' if self.promoted else 'not promoted to'} {CHAMPION}",
            "",
            f"{self.time}, against {f'champion v{self.against}' if self.against else 'no champion (first)'}.",
            "",
            *(f"- {reason}" for reason in self.reasons),
            "",
            "## Absolute gates",
            "",
            "| gate | verdict | detail |",
            "|---|---|---|",
            *(f"| {g.gate} | {'pass' if g.passed else 'FAIL'} | {g.detail} |" for g in self.gates),
            "",
            "## Against the champion",
            "",
        ]
        if not self.table:
            nothing = "No champion yet: nothing to compare." if self.against is None else "Not compared: see above."
            return "\n".join([*lines, nothing, ""])
        rows = [
            f"| {row.criterion} | {format_figure(row.candidate)} | {format_figure(row.champion)} | "
            f"{'WORSE' if row.worse else 'ok'} | {row.rule} |"
            for row in self.table
        ]
        return "\n".join(
            [*lines, "| criterion | candidate | champion | verdict | rule |", "|---|---|---|---|---|", *rows, ""]
        )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _safety(version: ModelVersion) -> dict[str, Any] | None:
    text = version.tags.get(SAFETY_TAG)
    return None if text is None else json.loads(text)


def decide(
    model_name: str,
    candidate: ModelVersion,
    champion: ModelVersion | None,
    tolerances: dict[str, float],
    gates: dict[str, Any],
) -> Decision:
    """Judge the candidate from the two versions' tags alone: absolute gates always, the champion when there is one."""
    time = _now()
    against = champion.version if champion else None
    record = _safety(candidate)
    if record is None:
        reason = (
            f"v{candidate.version} has no '{SAFETY_TAG}' tag (registered before promotion recorded its figures); "
            "export it again to register it with them"
        )
        return Decision(model_name, candidate.version, False, against, [reason], [], [], time)
    checks = absolute_gates(record, gates)
    reasons = [check.reason() for check in checks if not check.passed]
    table: list[Comparison] = []
    if champion is not None:
        held_to = _safety(champion)
        if held_to is None:
            reasons.append(
                f"champion v{champion.version} has no '{SAFETY_TAG}' tag, so nothing shows the candidate is not "
                "worse; if a reviewer accepts the candidate on the absolute gates alone, delete the "
                f"'{CHAMPION}' alias and re-run"
            )
        else:
            table = compare_versions(record, held_to, tolerances)
            reasons += [row.reason() for row in table if row.worse]
    promoted = not reasons
    if promoted:
        reasons = [
            f"no criterion worse than champion v{against}" if against else "first champion: nothing to compare",
            "every absolute gate passed",
        ]
    return Decision(model_name, candidate.version, promoted, against, reasons, checks, table, time)


@contextmanager
def _tracking(model_name: str, action: str) -> Iterator[None]:
    """Any tracking error stops promotion: a registry that cannot be read must never read as "no champion"."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        raise WorkbenchError(
            f"Promotion of {model_name!r} stopped while {action}: {default_tracking_uri()} answered "
            f"{error.error_code} ({error.message}). Nothing moved: the '{CHAMPION}' alias is where it was. "
            "Check that the tracking server is up and that you may write to this model, then re-run "
            f"`childsafe promote model_name={model_name}`."
        ) from error


def _aliases(client: MlflowClient, model_name: str) -> dict[str, str]:
    """The model's aliases. Their absence is read from this map, never inferred from a failed lookup.

    MLflow answers a lookup of a missing alias with INVALID_PARAMETER_VALUE, the same code as for a
    malformed request, so an error code alone cannot tell "no champion yet" from "could not ask".
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    with _tracking(model_name, "reading its aliases"):
        try:
            return dict(client.get_registered_model(model_name).aliases)
        except MlflowException as error:
            if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise
    raise WorkbenchError(
        f"No registered model {model_name!r} in {default_tracking_uri()}. Export one first (`childsafe export ...`)."
    )


def _version(client: MlflowClient, model_name: str, alias: str) -> ModelVersion:
    with _tracking(model_name, f"looking up its '{alias}' version"):
        return client.get_model_version_by_alias(model_name, alias)


def _record(client: MlflowClient, candidate: ModelVersion, decision: Decision) -> None:
    """The decision on the version: a `promotion` tag, and its table on the version's run (in a tag if it has none)."""
    with _tracking(decision.model_name, f"recording the decision on v{candidate.version}"):
        if candidate.run_id:
            path = f"promotion/v{candidate.version}-{decision.time.replace('-', '').replace(':', '')}.md"
            client.log_text(candidate.run_id, decision.markdown(), path)
            table = f"runs:/{candidate.run_id}/{path}"
        else:
            client.set_model_version_tag(
                decision.model_name, candidate.version, PROMOTION_TABLE_TAG, decision.markdown()
            )
            table = f"tag {PROMOTION_TABLE_TAG}"
        tag = json.dumps(decision.record() | {"table": table}, allow_nan=False)
        client.set_model_version_tag(decision.model_name, candidate.version, PROMOTION_TAG, tag)
        # The comparison follows the export's description, so the version page tells its whole story.
        current = client.get_model_version(decision.model_name, candidate.version).description or ""
        set_version_description(client, decision.model_name, candidate.version, f"{current}\n\n{decision.markdown()}")


def promote(model_name: str, tolerances: dict[str, float], gates: dict[str, Any]) -> Decision:
    """Move `champion` to `candidate` if it passes the absolute gates and no criterion is worse than the champion's."""
    from mlflow import MlflowClient

    client = MlflowClient(default_tracking_uri())
    aliases = _aliases(client, model_name)
    if CANDIDATE not in aliases:
        raise WorkbenchError(
            f"Registered model {model_name!r} has no '{CANDIDATE}' version in {default_tracking_uri()}. "
            "Export one first (`childsafe export ...`)."
        )
    candidate = _version(client, model_name, CANDIDATE)
    champion = _version(client, model_name, CHAMPION) if CHAMPION in aliases else None
    if champion is not None and champion.version == candidate.version:
        reasons = ["already the champion"]
        return Decision(model_name, candidate.version, True, champion.version, reasons, [], [], _now())
    decision = decide(model_name, candidate, champion, tolerances, gates)
    _record(client, candidate, decision)
    if decision.promoted:
        try:
            with _tracking(model_name, f"moving '{CHAMPION}' to v{candidate.version} after recording that decision"):
                client.set_registered_model_alias(model_name, CHAMPION, candidate.version)
        except WorkbenchError:
            # The record said "promoted": correct it, so the version never claims a move that did not happen.
            failed = replace(decision, promoted=False, reasons=[*decision.reasons, f"moving '{CHAMPION}' failed"])
            _record(client, candidate, failed)
            raise
    return decision
