"""The metric glossary: the docs page is its rendering, every key resolves to one entry, and evaluate's
metrics table carries intervals, units and meanings while MLflow's metrics carry values."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from evaluation.glossary import GLOSSARY, PLACEHOLDERS, entries_for, lookup, metric_values, metrics_table, render
from evaluation.stats import Estimate, not_measurable

DOC = Path(__file__).resolve().parents[2] / "docs" / "metric-glossary.md"
STAGES = {"train", "calibrate", "evaluate", "export"}


def test_the_docs_page_is_the_rendered_glossary():
    assert DOC.read_text() == render(), "run: python -m evaluation.glossary > docs/metric-glossary.md"


def test_entries_name_known_placeholders_stages_and_units():
    patterns = [entry.pattern for entry in GLOSSARY]
    assert len(patterns) == len(set(patterns))
    for entry in GLOSSARY:
        assert set(entry.stages) <= STAGES and entry.stages, entry
        assert entry.unit and entry.meaning.endswith("."), entry
        entry.regex  # noqa: B018 - raises KeyError on an unknown placeholder
    assert {name for entry in GLOSSARY for name in entry.regex.groupindex} == set(PLACEHOLDERS)


@pytest.mark.parametrize(
    ("key", "pattern"),
    [
        ("test/age/gate13/ece", "test/age/gate{gate}/{score}"),
        ("test/age/gate13/ece_after", "{split}/age/gate{gate}/{score}_{when}"),
        ("test/age/gate13/brier_uncalibrated", "test/age/gate{gate}/brier_uncalibrated"),
        ("test/content/explicit/recall", "test/content/{class}/recall"),
        ("test/content/recall_explicit/recall", "test/content/recall_{label}/recall"),
        ("test/content/unsafe_ece_before", "{split}/content/{label}_{when}"),
        ("test/age/gate18/challenge_age21/minor_pass_rate", "test/age/gate{gate}/challenge_age{age}/minor_pass_rate"),
        ("lr-AdamW/backbone", "lr-AdamW/{group}"),
    ],
)
def test_a_key_resolves_to_exactly_one_entry(key, pattern):
    assert [entry.pattern for entry in entries_for(key)] == [pattern]


def test_an_unknown_key_has_no_entry():
    assert lookup("test/age/cs5") is None and lookup("test/age/gate13/ece_during") is None


def test_the_table_keeps_intervals_and_mlflow_gets_values_and_headline_bounds():
    table = metrics_table(
        {
            "test/age/mae": Estimate(3.2, 3.0, 3.4, 500),
            "test/age/gate13/minor_pass_rate": Estimate(0.01, 0.0, 0.05, 80),
            "test/content/recall_explicit/recall": Estimate(0.99, 0.97, 1.0, 90),
            "test/age/gate16/no_minor_pass_challenge_age": not_measurable("no people under 16 in this data"),
        }
    )
    mae = table.set_index("metric").loc["test/age/mae"]
    assert (mae["ci_low"], mae["ci_high"], mae["n"], mae["unit"]) == (3.0, 3.4, 500, "years")
    assert mae["meaning"].startswith("Mean absolute error")
    numbers, unmeasured = metric_values(table)
    assert numbers == {
        "test/age/mae": 3.2,
        "test/age/gate13/minor_pass_rate": 0.01,
        "test/age/gate13/minor_pass_rate_ci_high": 0.05,
        "test/content/recall_explicit/recall": 0.99,
        "test/content/recall_explicit/recall_ci_low": 0.97,
    }
    assert unmeasured == {"test/age/gate16/no_minor_pass_challenge_age": "no people under 16 in this data"}
    assert pd.isna(table.set_index("metric").loc["test/age/gate16/no_minor_pass_challenge_age", "value"])
