"""Small bundle folders for the integrity and signing tests: real SHA256SUMS and signatures, a stand-in model.

The model bytes are not ONNX: integrity and signing read only bytes, and the embedded contract is passed
to `read_contract` as the text onnxruntime's metadata map would hold.
"""

from __future__ import annotations

import json
from pathlib import Path

from childsafe_runtime.integrity import SUMS_FILE, sums_text
from childsafe_runtime.signing import sign_sums, signing_record
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def make_bundle(folder: Path, key: Ed25519PrivateKey | None = None) -> tuple[Path, str]:
    """A bundle as export writes it, signed with `key` when given; returns it and its embedded contract text."""
    folder.mkdir(parents=True)
    contract = {"schema_version": 2, "task": "age", "release": {"signing": signing_record(key)}}
    (folder / "model.onnx").write_bytes(b"\x08\x09stand-in model bytes")
    (folder / "contract.json").write_text(json.dumps(contract, indent=2, sort_keys=True))
    (folder / "model_card.md").write_text("# model card\n")
    (folder / SUMS_FILE).write_text(sums_text(folder))
    if key is not None:
        sign_sums(folder, key)
    return folder, json.dumps(contract)  # compact and unsorted: equal as parsed JSON, not as bytes


def rewrite_sums(folder: Path) -> None:
    """What someone who changed a file does next: regenerate SHA256SUMS so integrity alone passes."""
    (folder / SUMS_FILE).write_text(sums_text(folder))
