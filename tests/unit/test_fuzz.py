"""Property tests: any input gives a valid result or a named error, never a crash or a hang."""

import json
import shutil

import pytest
import yaml
from childsafe_runtime.integrity import BundleError, verify_bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calibration.state import CalibrationState
from core.errors import WorkbenchError
from datamodules.cards import load_card
from datamodules.licensed.appa_real import AppaReal
from datamodules.licensed.filenames import AgeDB, FGNet, UTKFace
from datamodules.licensed.tables import AgeManifest, ContentManifest
from datamodules.screening import HashList
from export.contract import validate_contract

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


# Dataset manifests arrive from outside: label tables, file names, hash lists and cards.

TABLE_TEXT = st.text(
    alphabet=st.sampled_from('path,age,label,subject_id,box_x0,"\n\r;0123456789.-nanNa/éx '), max_size=300
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(TABLE_TEXT)
def test_label_table_adapters_read_any_csv_or_raise_a_named_error(tmp_path, text):
    (tmp_path / "manifest.csv").write_text(text)
    for adapter in (AgeManifest(), ContentManifest()):
        try:
            rows = adapter.read(tmp_path)
        except WorkbenchError as error:
            assert "manifest.csv" in str(error)
        else:
            assert {"id", "path", "reason"} <= set(rows.columns)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["train", "valid", "test"]), TABLE_TEXT, min_size=3, max_size=3))
def test_appa_real_reads_any_label_tables_or_raises_a_named_error(tmp_path, tables):
    for own, text in tables.items():
        (tmp_path / f"gt_avg_{own}.csv").write_text(text)
    try:
        rows = AppaReal().read(tmp_path)
    except WorkbenchError as error:
        assert "gt_avg_" in str(error)
    else:
        assert rows["age"].dtype.kind == "f"


FILE_NAME = st.text(alphabet=st.characters(blacklist_characters="/\x00", codec="utf-8"), min_size=1, max_size=40)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(FILE_NAME.filter(lambda n: n not in (".", "..") and len(n.encode()) < 200), max_size=5, unique=True))
def test_filename_adapters_parse_or_quarantine_every_name(tmp_path, names):
    root = tmp_path / "fuzz"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    for name in names:
        (root / name).write_bytes(b"")
    visible = [n for n in names if not n.startswith(".")]
    for adapter in (UTKFace(), FGNet(), AgeDB()):
        rows = adapter.read(root)
        assert len(rows) == len(visible)
        if not visible:
            continue  # an empty folder: ingest refuses it by name (tests/unit/test_licensed_data.py)
        parsed = rows["reason"].isna()
        assert rows.loc[parsed, "age"].notna().all()
        assert (rows.loc[~parsed, "reason"] == "unparsable_filename").all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300) | st.text(alphabet="0123456789abcdefABCDEF #\n\t xg", max_size=300))
def test_hash_list_loader_accepts_or_names_file_and_line(tmp_path, content):
    path = tmp_path / "list.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    try:
        hash_list = HashList.load([path])
    except WorkbenchError as error:
        assert str(path) in str(error)
    else:
        assert hash_list.hashes.shape[1:] == (32,) and len(hash_list.sources) == len(hash_list.hashes)


CARD_KEYS = ["name", "source", "version", "licence", "permitted_uses", "consent_basis", "contains_minors"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from([*CARD_KEYS, "known_biases", "collection_notes"]), JSON, max_size=10) | JSON)
def test_dataset_card_loader_accepts_or_names_the_card(tmp_path, document):
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        card = load_card(path)
    except WorkbenchError as error:
        assert str(path) in str(error)
    else:
        assert isinstance(card.permitted_uses, list) and isinstance(card.contains_minors, bool)
