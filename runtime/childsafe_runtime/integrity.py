"""Bundle integrity and authenticity: what the exporter writes and what every consumer checks first.

A bundle folder holds model.onnx, contract.json, model_card.md, SHA256SUMS and, when signed,
SHA256SUMS.sig (Ed25519 over the exact bytes of SHA256SUMS; see `childsafe_runtime.signing`).

How a consumer uses it (H2b's `Filter` does exactly this)::

    check = verify_bundle(folder, public_key=pinned)       # BundleError on any refusal
    session = onnxruntime.InferenceSession(str(folder / MODEL_FILE))
    embedded = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    contract = read_contract(check, embedded)              # BundleError on a mismatch
    for warning in check.warnings: ...                     # tell the operator (stderr, a log)

`verify_bundle` refuses, each with its own message (all problems of one bundle are listed together):
- SHA256SUMS missing, not UTF-8, a malformed line (named by its number), a name listed twice, a name
  that is not a plain file name of this folder, or model.onnx / contract.json not listed;
- a listed file that is missing ("removed"), except contract.json (see below);
- a file in the folder that SHA256SUMS does not list ("added"); only SHA256SUMS and SHA256SUMS.sig
  themselves are exempt;
- a file whose sha256 differs from its line ("changed");
- with a pinned public key: no SHA256SUMS.sig ("unsigned"), or a signature that does not verify
  (a different release key, or SHA256SUMS changed after signing), or an unreadable key file.
Without a pinned key it warns that only integrity was checked, not authenticity: anyone who can
change model.onnx can rewrite SHA256SUMS too.

Losing contract.json is not fatal: model.onnx carries the same contract in its metadata
(`METADATA_KEY`). When model.onnx verifies (and the signature, when a key is pinned), `read_contract`
returns that embedded contract and `verify_bundle` has already warned that contract.json is missing.
When both exist they must be equal as parsed JSON (json.loads equality, not bytes).

Standard library only for integrity; `cryptography` is imported only when a key is pinned, so a runtime
team can lift this file alone for integrity-only checks.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from childsafe_runtime.signing import PublicKeySource

SUMS_FILE = "SHA256SUMS"
SIGNATURE_FILE = "SHA256SUMS.sig"
MODEL_FILE = "model.onnx"
CONTRACT_FILE = "contract.json"
METADATA_KEY = "childsafe_contract"  # the ONNX metadata_props key of the embedded contract
REQUIRED = (MODEL_FILE, CONTRACT_FILE)

# `sha256sum` writes `<hex>  <name>` in text mode and `<hex> *<name>` in binary mode (`-b`); both mean the same.
SUMS_LINE = re.compile(r"(?P<digest>[0-9a-fA-F]{64}) (?P<mode>[ *])(?P<name>.+)")


class BundleError(Exception):
    """The bundle cannot be trusted or read; the message says which file and why."""


@dataclass(frozen=True)
class BundleCheck:
    """The outcome of a successful `verify_bundle`: pass it to `read_contract`.

    signed: the signature verified against a pinned public key (False when no key was pinned, even if
        the bundle carries a signature: nothing was checked against a key the runtime trusts).
    public_key_sha256: sha256 of the pinned key's PEM SubjectPublicKeyInfo bytes, or None.
    digests: every listed file name and its verified sha256 (lower-case hex).
    contract_missing: contract.json is listed but absent; `read_contract` then uses the embedded contract.
    warnings: sentences for the operator (unsigned check, missing contract.json).
    """

    folder: Path
    signed: bool
    public_key_sha256: str | None
    digests: dict[str, str]
    contract_missing: bool
    warnings: list[str] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks so a large model does not sit in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_files(folder: Path) -> list[str]:
    """The names SHA256SUMS must list: everything in the folder but SHA256SUMS and its signature."""
    return sorted(p.name for p in folder.iterdir() if p.name not in (SUMS_FILE, SIGNATURE_FILE))


def sums_text(folder: Path) -> str:
    """`sha256sum`-compatible text-mode lines for every bundle file, so `sha256sum -c SHA256SUMS` verifies it."""
    return "".join(f"{sha256_file(folder / name)}  {name}\n" for name in bundle_files(folder))


def parse_sums(data: bytes, source: Path) -> dict[str, str]:
    """File name -> lower-case hex sha256 from SHA256SUMS bytes; a bad line is named by its number."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BundleError(f"{source} is not UTF-8 text (byte {error.start}): it is not a SHA256SUMS file.") from None
    listed: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = SUMS_LINE.fullmatch(line)
        if match is None:
            raise BundleError(
                f"{source} line {number} is malformed: expected '<64 hex digits>  <file>' "
                f"(or '<64 hex digits> *<file>', as `sha256sum -b` writes), got {line[:80]!r}."
            )
        name = match["name"]
        if name in (".", "..", SUMS_FILE, SIGNATURE_FILE) or "/" in name or "\\" in name:
            raise BundleError(
                f"{source} line {number} names {name!r}: SHA256SUMS lists the plain file names of its own folder, "
                f"never itself or {SIGNATURE_FILE}."
            )
        if name in listed:
            raise BundleError(f"{source} line {number} lists {name!r} a second time.")
        listed[name] = match["digest"].lower()
    missing = [name for name in REQUIRED if name not in listed]
    if missing:
        raise BundleError(f"{source} does not list {' or '.join(missing)}: it was not written by the exporter.")
    return listed


def file_problems(folder: Path, listed: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Each removed, added or changed file as its own sentence, and the digests that did verify."""
    problems = [
        f"{name} is listed in SHA256SUMS but missing from the bundle (removed)"
        for name in listed
        if name != CONTRACT_FILE and not (folder / name).is_file()
    ]
    problems += [
        f"{name} is in the bundle but not listed in SHA256SUMS (added)"
        for name in bundle_files(folder)
        if name not in listed
    ]
    verified = {}
    for name, expected in listed.items():
        path = folder / name
        if not path.is_file():
            continue
        try:
            actual = sha256_file(path)
        except OSError as error:
            problems.append(f"{name} cannot be read ({error.strerror or error}): check its permissions")
            continue
        if actual == expected:
            verified[name] = actual
        else:
            problems.append(f"{name} does not match its SHA256SUMS entry (changed: sha256 {actual}, listed {expected})")
    return problems, verified


def verify_bundle(folder: Path, public_key: PublicKeySource | None = None) -> BundleCheck:
    """Check SHA256SUMS, every file against it and, with a pinned key, its signature; see the module docstring.

    public_key: a path to a PEM public key (release.pub), its PEM text or bytes, or a loaded
    Ed25519PublicKey. None checks integrity only, with a warning saying so.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"{folder} is not a bundle folder: it does not exist or is not a directory.")
    sums = folder / SUMS_FILE
    if not sums.is_file():
        raise BundleError(
            f"{sums} is missing: without it nothing in {folder} can be checked, so the bundle is refused. "
            "Re-export it, or copy the whole bundle folder again."
        )
    try:
        data = sums.read_bytes()
    except OSError as error:
        raise BundleError(f"{sums} cannot be read ({error.strerror or error}): check its permissions.") from None
    listed = parse_sums(data, sums)
    warnings = []
    key_digest = None
    if public_key is None:
        warnings.append(
            f"No public key pinned: {folder} was checked for integrity only, not authenticity (anyone able to "
            f"change model.onnx can rewrite SHA256SUMS too). Pin the release key: --public-key release.pub."
        )
    else:
        from childsafe_runtime.signing import verify_signature

        key_digest = verify_signature(folder, public_key)
    problems, verified = file_problems(folder, listed)
    if problems:
        raise BundleError(f"{folder} is refused:\n  - " + "\n  - ".join(problems))
    missing_contract = not (folder / CONTRACT_FILE).is_file()
    if missing_contract:
        warnings.append(
            f"{folder / CONTRACT_FILE} is missing: using the contract embedded in model.onnx, which verified "
            f"against SHA256SUMS{' and its signature' if key_digest else ''}. Restore contract.json from the release."
        )
    return BundleCheck(folder, key_digest is not None, key_digest, verified, missing_contract, warnings)


def _parse_contract(text: str | bytes, source: str) -> dict[str, Any]:
    def refuse_non_finite(constant: str) -> None:
        raise ValueError(f"non-finite number {constant}")

    try:
        contract = json.loads(text, parse_constant=refuse_non_finite)
    except ValueError as error:
        raise BundleError(f"{source} is not valid strict JSON: {error}.") from None
    if not isinstance(contract, dict):
        raise BundleError(f"{source} is not a JSON object, so it is not an export contract.")
    return contract


def read_contract(check: BundleCheck, embedded_text: str | None) -> dict[str, Any]:
    """The verified bundle's contract: contract.json, equal as parsed JSON to the one embedded in model.onnx.

    embedded_text: model.onnx's metadata_props value under METADATA_KEY, e.g. from onnxruntime's
    `session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)`; None when the model has none.
    When contract.json is missing (check.contract_missing) the embedded contract is returned alone.
    """
    model = check.folder / MODEL_FILE
    embedded_source = f"{model} metadata '{METADATA_KEY}'"
    if embedded_text is None:
        raise BundleError(
            f"{model} carries no embedded contract (metadata key '{METADATA_KEY}'): it was not written by the exporter."
        )
    embedded = _parse_contract(embedded_text, embedded_source)
    if check.contract_missing:
        return embedded
    sidecar_path = check.folder / CONTRACT_FILE
    sidecar = _parse_contract(sidecar_path.read_bytes(), str(sidecar_path))
    if sidecar != embedded:
        raise BundleError(
            f"{sidecar_path} and the contract embedded in {model} differ (compared as parsed JSON): "
            "the bundle was assembled from two exports. Re-export it."
        )
    return sidecar
