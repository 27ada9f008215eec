"""Bundles are staged in a temporary folder and renamed into the release folder only when complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from childsafe_runtime.integrity import SUMS_FILE, sums_text
from childsafe_runtime.signing import KEY_ENV, KeyFileError, configured_private_key, sign_sums
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.errors import WorkbenchError


def release_key(configured: str | None) -> Ed25519PrivateKey | None:
    """The key export signs with (export.signing.key, else env CHILDSAFE_SIGNING_KEY), or None: unsigned."""
    try:
        return configured_private_key(configured)
    except KeyFileError as error:
        raise WorkbenchError(
            f"The release signing key (export.signing.key or env {KEY_ENV}) cannot be used: {error}"
        ) from error


def write_sums(folder: Path, signing_key: Ed25519PrivateKey | None) -> Path:
    """SHA256SUMS over every file of the bundle (`sha256sum -c` checks it), then SHA256SUMS.sig when a key is given.

    Written last: the signature covers the list, and the list covers every file, so nothing changes after it.
    """
    (folder / SUMS_FILE).write_text(sums_text(folder))
    if signing_key is not None:
        sign_sums(folder, signing_key)
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
