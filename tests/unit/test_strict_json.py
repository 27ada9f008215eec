"""No NaN or Infinity reaches JSON or MLflow: strict parsing, params, metrics and evaluation figures."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from stage_configs import NonFiniteJSON, strict_json_loads

from evaluation.content import content_metrics
from tracking.mlflow_run import NOT_LOGGED, flatten, log_metrics

pytest_plugins = ["pytester"]


class RecordingClient:
    """Stands in for MlflowClient: keeps what log_batch was given."""

    def __init__(self):
        self.metrics, self.tags = {}, {}

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.metrics |= {m.key: m.value for m in metrics}
        self.tags |= {t.key: t.value for t in tags}


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_the_suites_contract_parser_rejects_bare_non_finite_numbers(constant):
    with pytest.raises(NonFiniteJSON, match=constant):
        strict_json_loads(f'{{"metrics": {{"headline": {{"value": {constant}}}}}}}')
    assert strict_json_loads('{"value": null, "reason": "no minors", "x": 1.5e-3}')["x"] == 0.0015


def test_a_non_finite_metric_is_not_logged_but_explained_in_a_tag():
    client = RecordingClient()
    log_metrics(
        client,
        "run",
        {"test/age/mae": 3.2, "test/age/gate13/ece": math.nan, "test/x": math.inf, "test/y": None},
        {"test/age/gate13/minor_pass_rate": "no people under 13 in this data"},
    )
    assert client.metrics == {"test/age/mae": 3.2}
    assert client.tags == {
        f"{NOT_LOGGED}test/age/gate13/ece": "value nan is not a finite number",
        f"{NOT_LOGGED}test/x": "value inf is not a finite number",
        f"{NOT_LOGGED}test/y": "value None is not a finite number",
        f"{NOT_LOGGED}test/age/gate13/minor_pass_rate": "no people under 13 in this data",
    }


def test_non_finite_params_become_null():
    params = flatten({"a": math.nan, "b": [1.0, math.inf], "c": {"d": 2.0, "e": -math.inf}, "f": "x"})
    assert params == {"a": "null", "b": "[1.0, null]", "c.d": 2.0, "c.e": "null", "f": "x"}


def test_an_unsupported_evaluation_figure_is_none_with_a_reason_and_dumps_as_strict_json():
    rng = np.random.default_rng(0)
    classes = ["safe", "suggestive", "explicit"]
    labels = rng.integers(0, 3, 300)
    probs = np.full((300, 3), 0.1)
    probs[np.arange(300), np.where(labels == 1, 0, labels)] = 0.8  # nothing is ever predicted "suggestive"
    frame = pd.DataFrame(
        {
            "label": labels,
            "subject_id": np.arange(300) // 3,
            **{f"p_{c}": probs[:, i] for i, c in enumerate(classes)},
            "unsafe_score": probs[:, 1:].sum(1),
        }
    )
    metrics, _ = content_metrics(frame, classes, classes[1:], 0.005, {}, calibrated=True)
    precision = metrics["suggestive/precision"]
    assert precision.to_dict() == {
        "value": None,
        "ci_low": None,
        "ci_high": None,
        "n": int((labels == 1).sum()),
        "reason": "nothing is predicted 'suggestive'",
    }
    text = json.dumps({name: estimate.to_dict() for name, estimate in metrics.items()}, allow_nan=False)
    assert strict_json_loads(text)["accuracy"]["value"] == metrics["accuracy"].value


def test_the_autouse_net_fails_a_test_that_writes_a_nan_contract(pytester):
    pytester.makeconftest((Path(__file__).parents[1] / "conftest.py").read_text())
    pytester.makepyfile(
        """
        import json

        def test_writes_nan(tmp_path):
            (tmp_path / "contract.json").write_text(json.dumps({"value": float("nan")}))

        def test_writes_null(tmp_path):
            (tmp_path / "contract.json").write_text(json.dumps({"value": None, "reason": "none"}))
        """
    )
    inner = pytester.path / "inner-tmp"
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--basetemp={inner}")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*contract.json is not strict JSON: non-finite number NaN*"])
    for planted in inner.rglob("contract.json"):  # or this test's own net would catch them too
        planted.unlink()
