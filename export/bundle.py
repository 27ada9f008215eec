"""Bundles are staged in a temporary folder and renamed into the release folder only when complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from childsafe_runtime.integrity import sha256_file

BUNDLE_FILES = ("model.onnx", "contract.json", "model_card.md")
SUMS_FILE = "SHA256SUMS"


def write_sums(folder: Path) -> Path:
    """`sha256sum`-compatible lines, so `sha256sum -c SHA256SUMS` verifies a bundle without our code."""
    lines = [f"{sha256_file(folder / name)}  {name}\n" for name in BUNDLE_FILES]
    (folder / SUMS_FILE).write_text("".join(lines))
    return folder / SUMS_FILE


def staging_folder(release_root: Path) -> Path:
    release_root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=release_root))


def publish(staging: Path, destination: Path) -> Path:
    """Atomically move a complete bundle into place; an earlier bundle of the same name is replaced whole."""
    staging.chmod(0o755)
    if destination.exists():
        retired = destination.with_name(f".retired-{destination.name}-{os.getpid()}")
        os.replace(destination, retired)
        os.replace(staging, destination)
        shutil.rmtree(retired)
    else:
        os.replace(staging, destination)
    return destination
