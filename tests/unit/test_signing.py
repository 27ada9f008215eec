"""Signed releases: key pairs, the signature over SHA256SUMS, and each refusal a pinned key brings, by its message."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from childsafe_runtime.integrity import SIGNATURE_FILE, BundleError, read_contract, verify_bundle
from childsafe_runtime.signing import (
    KEY_ENV,
    KeyFileError,
    configured_private_key,
    load_private_key,
    new_key_pair,
    public_key_sha256,
    verify_signature,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from fake_bundles import make_bundle, rewrite_sums

from scripts import keys

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def release(tmp_path):
    """A release key pair on disk and a bundle signed with it."""
    private_path, public_path = new_key_pair(tmp_path / "keys")
    bundle, embedded = make_bundle(tmp_path / "bundle", load_private_key(private_path))
    return bundle, embedded, private_path, public_path


def test_a_new_key_pair_is_pem_private_0600_and_never_overwritten(tmp_path):
    private_path, public_path = new_key_pair(tmp_path / "keys")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert private_path.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
    assert public_path.read_text().startswith("-----BEGIN PUBLIC KEY-----")  # SubjectPublicKeyInfo
    before = private_path.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite a release key"):
        new_key_pair(tmp_path / "keys")
    assert private_path.read_bytes() == before


def test_a_signed_bundle_verifies_against_the_pinned_key_and_states_its_fingerprint(release):
    bundle, embedded, _, public_path = release
    check = verify_bundle(bundle, public_key=public_path)
    fingerprint = hashlib.sha256(public_path.read_bytes()).hexdigest()  # `sha256sum release.pub`
    assert check.signed and check.public_key_sha256 == fingerprint and check.warnings == []
    assert read_contract(check, embedded)["release"]["signing"]["public_key_sha256"] == fingerprint
    assert len((bundle / SIGNATURE_FILE).read_bytes()) == 64  # raw Ed25519 signature bytes
    assert verify_bundle(bundle, public_key=public_path.read_text()).signed  # the PEM text itself works too


def test_without_a_pinned_key_only_integrity_is_checked_and_the_operator_is_told(release):
    bundle, *_ = release
    check = verify_bundle(bundle)
    assert not check.signed and check.public_key_sha256 is None
    assert any("checked for integrity only, not authenticity" in warning for warning in check.warnings)


def test_an_unsigned_bundle_is_refused_when_a_key_is_pinned(release):
    bundle, _, _, public_path = release
    (bundle / SIGNATURE_FILE).unlink()
    with pytest.raises(BundleError, match=r"is unsigned \(SHA256SUMS.sig is missing\) but a release key is pinned"):
        verify_bundle(bundle, public_key=public_path)


def test_a_bundle_signed_with_another_key_is_refused_as_such(release, tmp_path):
    bundle, *_ = release
    _, other_public = new_key_pair(tmp_path / "other")
    with pytest.raises(BundleError, match=r"signed with release key [0-9a-f]{64}, a different key"):
        verify_bundle(bundle, public_key=other_public)


def test_sums_rewritten_after_signing_are_refused_although_every_hash_matches(release):
    bundle, _, _, public_path = release
    (bundle / "model.onnx").write_bytes(b"a substituted model")
    rewrite_sums(bundle)
    verify_bundle(bundle)  # integrity alone is fooled: this is why releases are signed
    with pytest.raises(BundleError, match="SHA256SUMS was changed after signing, or the bundle was signed with"):
        verify_bundle(bundle, public_key=public_path)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (
            lambda b: (b / "model.onnx").write_bytes(b"changed"),
            r"model.onnx does not match its SHA256SUMS entry \(changed",
        ),
        (
            lambda b: (b / "extra.onnx").write_bytes(b"added"),
            r"extra.onnx is in the bundle but not listed .* \(added\)",
        ),
        (lambda b: (b / "model_card.md").unlink(), r"model_card.md is listed in SHA256SUMS but missing .* \(removed\)"),
    ],
    ids=["changed", "added", "removed"],
)
def test_changed_added_and_removed_files_are_refused_under_a_valid_signature(release, tamper, message):
    bundle, _, _, public_path = release
    tamper(bundle)
    with pytest.raises(BundleError, match=message):
        verify_bundle(bundle, public_key=public_path)


def test_a_lost_contract_json_falls_back_to_the_signed_embedded_contract(release):
    bundle, embedded, _, public_path = release
    (bundle / "contract.json").unlink()
    check = verify_bundle(bundle, public_key=public_path)
    assert check.signed and check.contract_missing
    assert any("verified against SHA256SUMS and its signature" in warning for warning in check.warnings)
    assert read_contract(check, embedded) == json.loads(embedded)


def _garbage_pem(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.pub"
    path.write_text("-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n")
    return path


def _x25519_pem(tmp_path: Path) -> Path:
    path = tmp_path / "x25519.pub"
    public = X25519PrivateKey.generate().public_key()
    path.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.mark.parametrize(
    ("make_key", "message"),
    [
        (lambda d: d / "absent.pub", r"Cannot read the public key file .*absent\.pub"),
        (_garbage_pem, r"garbage\.pub is not a readable PEM public key"),
        (_x25519_pem, r"x25519\.pub holds a X25519PublicKey, not an Ed25519 key"),
    ],
    ids=["missing", "garbage", "wrong-algorithm"],
)
def test_an_unreadable_or_wrong_pinned_key_is_refused_naming_the_file(release, tmp_path, make_key, message):
    bundle, *_ = release
    with pytest.raises(KeyFileError, match=message):
        verify_signature(bundle, make_key(tmp_path))


def test_the_export_key_comes_from_the_config_path_or_the_environment(release, monkeypatch, tmp_path):
    _, _, private_path, public_path = release
    expected = public_key_sha256(load_private_key(private_path).public_key())
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert configured_private_key(None) is None  # unsigned export
    monkeypatch.setenv(KEY_ENV, str(private_path))
    assert public_key_sha256(configured_private_key(None).public_key()) == expected
    monkeypatch.setenv(KEY_ENV, private_path.read_text())  # the PEM text itself, as a CI secret holds it
    assert public_key_sha256(configured_private_key(None).public_key()) == expected
    other = Ed25519PrivateKey.generate()
    other_path = tmp_path / "other.key"
    other_path.write_bytes(
        other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    assert public_key_sha256(configured_private_key(str(other_path)).public_key()) != expected  # config wins
    with pytest.raises(KeyFileError, match=r"release\.pub is not a readable unencrypted PEM private key"):
        configured_private_key(str(public_path))


def test_keys_new_writes_a_pair_and_refuses_a_second_time(tmp_path, capsys):
    keys.main(["new", "--out", str(tmp_path / "keys")])
    assert "release.key" in capsys.readouterr().out and (tmp_path / "keys" / "release.pub").is_file()
    with pytest.raises(SystemExit) as refused:
        keys.main(["new", "--out", str(tmp_path / "keys")])
    assert refused.value.code == 1 and "refusing to overwrite" in capsys.readouterr().err


def test_childsafe_keys_help_answers_fast_without_torch():
    probe = (
        "import sys\n"
        "from scripts.cli import main\n"
        "sys.argv = ['childsafe', 'keys', '--help']\n"
        "try:\n    main(['keys', '--help'])\nexcept SystemExit as done:\n    assert done.code == 0\n"
        "assert 'torch' not in sys.modules and 'hydra' not in sys.modules, 'keys imported torch or Hydra'\n"
    )
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert "childsafe keys new --out DIR" in done.stdout
    assert elapsed < 5.0, f"`childsafe keys --help` took {elapsed:.1f} s"
