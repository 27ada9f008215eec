"""SHA256SUMS: both sha256sum line formats, every file listed, removed / added / changed refused each by name,
and the contract read from the verified bundle (falling back to the embedded one when contract.json is lost)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from childsafe_runtime.integrity import SUMS_FILE, BundleError, read_contract, verify_bundle
from fake_bundles import make_bundle, rewrite_sums

PHRASES = {"removed": "(removed)", "added": "(added)", "changed": "(changed:"}


def test_the_exporters_sums_list_every_file_and_verify_with_sha256sum(tmp_path):
    bundle, embedded = make_bundle(tmp_path / "bundle")
    names = [line.split("  ", 1)[1] for line in (bundle / SUMS_FILE).read_text().splitlines()]
    assert names == ["contract.json", "model.onnx", "model_card.md"]
    if shutil.which("sha256sum"):  # the coreutils tool agrees, with no code of ours
        subprocess.run(["sha256sum", "--check", "--quiet", SUMS_FILE], cwd=bundle, check=True)
    check = verify_bundle(bundle)
    assert set(check.digests) == set(names) and not check.signed and not check.contract_missing
    assert read_contract(check, embedded) == json.loads(embedded)


def test_binary_mode_lines_as_sha256sum_b_writes_them_are_accepted(tmp_path):
    bundle, _ = make_bundle(tmp_path / "bundle")
    lines = (bundle / SUMS_FILE).read_text().splitlines()
    # `sha256sum -b` writes '<hex> *<name>'; upper-case hex is what some other tools write.
    (bundle / SUMS_FILE).write_text("".join(f"{line[:64].upper()} *{line[66:]}\n" for line in lines))
    assert " *model.onnx" in (bundle / SUMS_FILE).read_text()
    assert set(verify_bundle(bundle).digests) == {"contract.json", "model.onnx", "model_card.md"}


def test_a_malformed_line_is_named_by_its_number(tmp_path):
    bundle, _ = make_bundle(tmp_path / "bundle")
    lines = (bundle / SUMS_FILE).read_text().splitlines()
    lines[1] = lines[1].replace("  ", "\t")
    (bundle / SUMS_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(BundleError, match=r"SHA256SUMS line 2 is malformed: expected '<64 hex digits>  <file>'"):
        verify_bundle(bundle)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0" * 64 + "  ../contract.json", "line 4 names '../contract.json'"),
        ("0" * 64 + "  SHA256SUMS", "never itself"),
        ("0" * 64 + "  model.onnx", "line 4 lists 'model.onnx' a second time"),
    ],
)
def test_names_outside_the_folder_itself_and_repeats_are_refused(tmp_path, line, message):
    bundle, _ = make_bundle(tmp_path / "bundle")
    with (bundle / SUMS_FILE).open("a") as handle:
        handle.write(line + "\n")
    with pytest.raises(BundleError, match=message):
        verify_bundle(bundle)


def test_missing_or_foreign_sums_are_refused(tmp_path):
    bundle, _ = make_bundle(tmp_path / "bundle")
    lines = (bundle / SUMS_FILE).read_text().splitlines()
    (bundle / SUMS_FILE).write_text("".join(f"{line}\n" for line in lines if not line.endswith("model.onnx")))
    with pytest.raises(BundleError, match=r"does not list model\.onnx"):
        verify_bundle(bundle)
    (bundle / SUMS_FILE).unlink()
    with pytest.raises(BundleError, match=r"SHA256SUMS is missing: without it nothing .* can be checked"):
        verify_bundle(bundle)
    with pytest.raises(BundleError, match="is not a bundle folder: it does not exist"):
        verify_bundle(bundle / "model.onnx")


def _remove(bundle):
    (bundle / "model_card.md").unlink()
    return "model_card.md is listed in SHA256SUMS but missing from the bundle (removed)"


def _add(bundle):
    (bundle / "notes.txt").write_text("added after export")
    return "notes.txt is in the bundle but not listed in SHA256SUMS (added)"


def _change(bundle):
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[3] ^= 0xFF
    (bundle / "model.onnx").write_bytes(bytes(data))
    return "model.onnx does not match its SHA256SUMS entry (changed: sha256 "


@pytest.mark.parametrize(("case", "tamper"), [("removed", _remove), ("added", _add), ("changed", _change)])
def test_removed_added_and_changed_files_are_refused_each_with_its_own_message(tmp_path, case, tamper):
    bundle, _ = make_bundle(tmp_path / "bundle")
    expected = tamper(bundle)
    with pytest.raises(BundleError) as refused:
        verify_bundle(bundle)
    message = str(refused.value)
    assert expected in message
    assert [name for name, phrase in PHRASES.items() if phrase in message] == [case]


def test_every_problem_of_one_bundle_is_listed_together(tmp_path):
    bundle, _ = make_bundle(tmp_path / "bundle")
    expected = [_remove(bundle), _add(bundle), _change(bundle)]
    with pytest.raises(BundleError) as refused:
        verify_bundle(bundle)
    assert all(sentence in str(refused.value) for sentence in expected)


def test_a_lost_contract_json_falls_back_to_the_verified_embedded_contract_and_says_so(tmp_path):
    bundle, embedded = make_bundle(tmp_path / "bundle")
    (bundle / "contract.json").unlink()
    check = verify_bundle(bundle)
    assert check.contract_missing
    assert any("contract.json is missing: using the contract embedded in model.onnx" in w for w in check.warnings)
    assert read_contract(check, embedded) == json.loads(embedded)
    with pytest.raises(BundleError, match="carries no embedded contract"):
        read_contract(check, None)
    _change(bundle)  # the fallback trusts the embedded contract only because model.onnx verified
    with pytest.raises(BundleError, match=r"model.onnx does not match its SHA256SUMS entry \(changed"):
        verify_bundle(bundle)


def test_sidecar_and_embedded_contract_are_compared_as_parsed_json(tmp_path):
    bundle, embedded = make_bundle(tmp_path / "bundle")
    check = verify_bundle(bundle)
    assert (bundle / "contract.json").read_text() != embedded  # different bytes, same JSON: accepted
    assert read_contract(check, embedded)["task"] == "age"
    other = json.dumps(json.loads(embedded) | {"task": "content"})
    with pytest.raises(BundleError, match="differ \\(compared as parsed JSON\\)"):
        read_contract(check, other)
    with pytest.raises(BundleError, match="metadata 'childsafe_contract' is not valid strict JSON"):
        read_contract(check, '{"threshold": NaN}')


def test_an_unreadable_sidecar_is_named(tmp_path):
    bundle, embedded = make_bundle(tmp_path / "bundle")
    (bundle / "contract.json").write_text("{ truncated")
    rewrite_sums(bundle)
    with pytest.raises(BundleError, match=r"contract.json is not valid strict JSON"):
        read_contract(verify_bundle(bundle), embedded)
