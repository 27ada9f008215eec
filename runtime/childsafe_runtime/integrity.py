"""Bundle integrity: SHA256SUMS checking, shared by the exporter that writes it and every consumer.

Standard library only, so a runtime team can lift this file as it is.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


class BundleError(Exception):
    """The bundle cannot be trusted or read; the message says which file and why."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_bundle(folder: Path) -> None:
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        raise BundleError(f"{sums} is missing: an unsigned bundle is refused.")
    listed = {}
    for number, line in enumerate(sums.read_text().splitlines(), 1):
        parts = line.split()
        if len(parts) != 2:
            raise BundleError(f"{sums} line {number} is malformed: expected '<sha256>  <file>'.")
        listed[parts[1]] = parts[0]
    for required in ("model.onnx", "contract.json"):
        if required not in listed:
            raise BundleError(f"{sums} does not list {required}.")
    for name, expected in listed.items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != expected:
            raise BundleError(f"{path} does not match its SHA256SUMS entry: the bundle was altered or is incomplete.")
