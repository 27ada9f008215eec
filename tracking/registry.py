"""The MLflow model registry: bundles registered as `candidate`, `champion` moved only through the safety gates."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tracking.errors import WorkbenchError
from tracking.mlflow_run import default_tracking_uri

CANDIDATE, CHAMPION = "candidate", "champion"


def safety_tags(contract: dict[str, Any]) -> dict[str, str]:
    """The numbers promotion compares, stored on the model version so the registry alone can decide."""
    headline = contract["metrics"]["headline"]
    tags = {
        "task": contract["task"],
        "headline.name": headline["name"],
        "headline.value": str(headline["value"]),
        "worst_slice_ratio": str(worst_slice_ratio(contract)),
    }
    for point in contract["operating_points"]:
        tags[f"gate.{point['name']}.miss_rate_upper"] = str(point["test"]["miss_rate_ci_high"])
    return tags


def data_tags(contract: dict[str, Any]) -> dict[str, str]:
    """What the training data permits, on the model version, so a release engineer sees it before deploying."""
    data = contract["data"]
    tags = {"data.name": data["name"], "data.licence": data["licence"], "data.digest": data["digest"]}
    if "card" in data:
        tags |= {
            "data.intended_use": data["intended_use"],
            "data.permitted_uses": ",".join(data["card"]["permitted_uses"]),
        }
    return tags


def worst_slice_ratio(contract: dict[str, Any]) -> float:
    """Largest max/min ratio of the headline metric across the values of any attribute (1 = parity)."""
    ratios = [1.0]
    for values in contract["metrics"]["slices"].values():
        numbers = [v["value"] for v in values.values() if v["value"] > 0]
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
    example = np.zeros((1, spec["height"], spec["width"], 3), dtype=np.uint8)
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
            extra_files=[str(bundle / name) for name in ("contract.json", "model_card.md", "SHA256SUMS")],
        )
    client = MlflowClient(default_tracking_uri())
    version = str(info.registered_model_version)
    for key, value in (safety_tags(contract) | data_tags(contract)).items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_registered_model_alias(model_name, CANDIDATE, version)
    return version


@dataclass(frozen=True)
class Comparison:
    criterion: str
    candidate: float
    champion: float
    worse: bool


def compare_versions(
    candidate: dict[str, str], champion: dict[str, str], tolerances: dict[str, float]
) -> list[Comparison]:
    """Each safety criterion, and whether the candidate is worse than the champion beyond its tolerance."""
    rows = []
    for key in sorted(k for k in candidate if k.startswith("gate.")):
        if key in champion:
            new, old = float(candidate[key]), float(champion[key])
            rows.append(Comparison(key, new, old, new > old + tolerances["gate"]))
    name = candidate["headline.name"]
    new, old = float(candidate["headline.value"]), float(champion["headline.value"])
    worse = new > old + tolerances["mae"] if name == "mae" else new < old - tolerances["accuracy"]
    rows.append(Comparison(f"headline.{name}", new, old, worse))
    new, old = float(candidate["worst_slice_ratio"]), float(champion["worst_slice_ratio"])
    rows.append(Comparison("worst_slice_ratio", new, old, new > old + tolerances["slice_ratio"]))
    return rows


def promote(model_name: str, tolerances: dict[str, float]) -> tuple[bool, list[Comparison]]:
    """Move `champion` to the `candidate` unless a safety criterion got worse; returns (promoted, table)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(default_tracking_uri())
    try:
        candidate = client.get_model_version_by_alias(model_name, CANDIDATE)
    except MlflowException as error:
        raise WorkbenchError(
            f"Registered model {model_name!r} has no '{CANDIDATE}' version in {default_tracking_uri()}. "
            "Export one first (`childsafe export ...`)."
        ) from error
    try:
        champion = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        client.set_registered_model_alias(model_name, CHAMPION, candidate.version)
        return True, []
    if champion.version == candidate.version:
        return True, []
    table = compare_versions(candidate.tags, champion.tags, tolerances)
    promoted = not any(row.worse for row in table)
    if promoted:
        client.set_registered_model_alias(model_name, CHAMPION, candidate.version)
    client.set_model_version_tag(
        model_name, candidate.version, "promotion", json.dumps({"promoted": promoted, "against": champion.version})
    )
    return promoted, table
