"""Property tests: any input gives a valid result or a named error, never a crash or a hang."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calibration.state import CalibrationState
from export.contract import validate_contract
from runtime.integrity import BundleError, verify_bundle
from tracking.errors import WorkbenchError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)
CONTRACT_KEYS = ["schema_version", "task", "input", "outputs", "operating_points", "labels", "versions"]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(CONTRACT_KEYS) | st.text(max_size=8), JSON, max_size=8))
def test_contract_validator_names_the_bad_field_or_accepts(candidate):
    try:
        validate_contract(candidate)
    except WorkbenchError as error:
        assert str(error).startswith("Export contract field '")


@settings(max_examples=150, deadline=None)
@given(JSON)
def test_calibration_state_parser_raises_only_named_errors(document):
    try:
        CalibrationState.from_json(json.dumps(document), source="fuzzed.json")
    except WorkbenchError as error:
        assert str(error).startswith("fuzzed.json is not a calibration state")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=400))
def test_sums_parser_refuses_any_malformed_file_with_a_bundle_error(tmp_path, text):
    (tmp_path / "SHA256SUMS").write_text(text)
    with pytest.raises(BundleError):
        verify_bundle(tmp_path)
