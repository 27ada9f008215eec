"""Ed25519 release signatures over SHA256SUMS: integrity says the files match their list, this says who wrote it.

SHA256SUMS sits beside the files it hashes, so anyone who can change model.onnx can rewrite it too.
The exporter therefore signs the exact bytes of SHA256SUMS with a release key kept outside the repo,
and a runtime pins the matching public key (`--public-key release.pub`, `Filter(bundle, public_key=...)`).

Keys are PEM files: the private key PKCS8 unencrypted (`release.key`, mode 0600), the public key
SubjectPublicKeyInfo (`release.pub`). The signature file SHA256SUMS.sig holds the raw 64 signature bytes.
The contract's `release.signing.public_key_sha256` is the sha256 of the PEM public key bytes, which is
`sha256sum release.pub` for a key written by `new_key_pair`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from childsafe_runtime.integrity import CONTRACT_FILE, SIGNATURE_FILE, SUMS_FILE, BundleError

ALGORITHM = "Ed25519"
PRIVATE_KEY_FILE = "release.key"
PUBLIC_KEY_FILE = "release.pub"
KEY_ENV = "CHILDSAFE_SIGNING_KEY"
PEM_BEGIN = "-----BEGIN "

PublicKeySource = Path | str | bytes | Ed25519PublicKey
PrivateKeySource = Path | str | bytes | Ed25519PrivateKey


class KeyFileError(BundleError):
    """A release key cannot be read, is not PEM, or is not an Ed25519 key; the message names the file."""


def new_key_pair(out_dir: Path) -> tuple[Path, Path]:
    """Write a fresh release.key (PKCS8 PEM, mode 0600) and release.pub (SubjectPublicKeyInfo PEM).

    Refuses to overwrite either file: replacing a release key silently would orphan every runtime that pinned it.
    """
    out_dir = Path(out_dir)
    private_path, public_path = out_dir / PRIVATE_KEY_FILE, out_dir / PUBLIC_KEY_FILE
    existing = [str(p) for p in (private_path, public_path) if p.exists()]
    if existing:
        raise KeyFileError(
            f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: refusing to overwrite a "
            "release key that runtimes may have pinned. Choose another --out folder, or remove the old pair yourself."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # O_EXCL: a file that appeared since the check above is still never overwritten; 0600 from the first byte.
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private_pem)
    with public_path.open("xb") as handle:
        handle.write(public_pem(key.public_key()))
    return private_path, public_path


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    """The SubjectPublicKeyInfo PEM bytes, exactly as release.pub holds them."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_sha256(public_key: Ed25519PublicKey) -> str:
    """Hex sha256 of the PEM public key: the fingerprint the contract states and operators compare."""
    return hashlib.sha256(public_pem(public_key)).hexdigest()


def _pem_and_name(source: Path | str | bytes, kind: str) -> tuple[bytes, str]:
    """PEM bytes from a path or from the PEM text itself, and the name to use in messages."""
    if isinstance(source, bytes):
        return source, f"the {kind} PEM given"
    if isinstance(source, str) and source.lstrip().startswith(PEM_BEGIN):
        return source.encode(), f"the {kind} PEM given"
    path = Path(source)
    try:
        return path.read_bytes(), str(path)
    except OSError as error:
        raise KeyFileError(f"Cannot read the {kind} file {path}: {error.strerror or error}.") from None


def load_private_key(source: PrivateKeySource) -> Ed25519PrivateKey:
    """The release private key from a path, its PEM text, or a loaded key."""
    if isinstance(source, Ed25519PrivateKey):
        return source
    data, name = _pem_and_name(source, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise KeyFileError(
            f"{name} is not a readable unencrypted PEM private key ({error}). "
            "Create one with `childsafe keys new --out DIR`."
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{name} holds a {type(key).__name__}, not an Ed25519 key: release keys are Ed25519.")
    return key


def load_public_key(source: PublicKeySource) -> Ed25519PublicKey:
    """The pinned release public key from a path (release.pub), its PEM text or bytes, or a loaded key."""
    if isinstance(source, Ed25519PublicKey):
        return source
    data, name = _pem_and_name(source, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise KeyFileError(
            f"{name} is not a readable PEM public key ({error}). Pin the release.pub written by `childsafe keys new`."
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{name} holds a {type(key).__name__}, not an Ed25519 key: release keys are Ed25519.")
    return key


def configured_private_key(configured: str | None) -> Ed25519PrivateKey | None:
    """The exporter's signing key: the configured path, else env CHILDSAFE_SIGNING_KEY (a path or the PEM text).

    None when neither is set: the bundle is exported unsigned and its contract says so. The key itself
    is never put into a config, so it cannot reach a logged Hydra config or an MLflow artefact.
    """
    source = configured or os.environ.get(KEY_ENV) or None
    return None if source is None else load_private_key(source)


def signing_record(private_key: Ed25519PrivateKey | None) -> dict[str, Any]:
    """The contract's `release.signing`: how to check the signature, and whose key made it (null when unsigned)."""
    return {
        "algorithm": ALGORITHM,
        "signed_file": SUMS_FILE,
        "signature_file": SIGNATURE_FILE,
        "signature_encoding": "raw 64 bytes",
        "public_key_sha256": None if private_key is None else public_key_sha256(private_key.public_key()),
    }


def sign_sums(bundle: Path, private_key: PrivateKeySource) -> Path:
    """Write SHA256SUMS.sig: the Ed25519 signature of SHA256SUMS's exact bytes."""
    bundle = Path(bundle)
    signature = load_private_key(private_key).sign((bundle / SUMS_FILE).read_bytes())
    (bundle / SIGNATURE_FILE).write_bytes(signature)
    return bundle / SIGNATURE_FILE


def _claimed_key(bundle: Path) -> str | None:
    """The key fingerprint the bundle's contract.json claims, only to tell a wrong key from a changed file."""
    try:
        return json.loads((bundle / CONTRACT_FILE).read_bytes())["release"]["signing"]["public_key_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verify_signature(bundle: Path, public_key: PublicKeySource) -> str:
    """Refuse unless SHA256SUMS.sig verifies SHA256SUMS with the pinned key; returns that key's sha256."""
    bundle = Path(bundle)
    key = load_public_key(public_key)
    fingerprint = public_key_sha256(key)
    signature_path = bundle / SIGNATURE_FILE
    if not signature_path.is_file():
        raise BundleError(
            f"{bundle} is unsigned ({SIGNATURE_FILE} is missing) but a release key is pinned "
            f"(sha256 {fingerprint}): an unsigned bundle is refused. Use a signed release."
        )
    try:
        key.verify(signature_path.read_bytes(), (bundle / SUMS_FILE).read_bytes())
    except InvalidSignature:
        claimed = _claimed_key(bundle)
        if claimed is not None and claimed != fingerprint:
            raise BundleError(
                f"{signature_path} does not verify with the pinned key (sha256 {fingerprint}): the bundle says it was "
                f"signed with release key {claimed}, a different key. Pin that release's public key, or get a "
                "bundle signed with yours."
            ) from None
        raise BundleError(
            f"{signature_path} does not verify {SUMS_FILE} with the pinned key (sha256 {fingerprint}): "
            f"{SUMS_FILE} was changed after signing, or the bundle was signed with another key. It is refused."
        ) from None
    return fingerprint
