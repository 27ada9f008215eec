"""`childsafe keys new --out DIR`: create the Ed25519 release key pair that export signs bundles with.

Plain argparse and the runtime's signing module only (no Hydra, no torch), so it answers at once.
The private key belongs in a secret store or a release machine's protected folder, never in the repo:
export reads it from `export.signing.key=PATH` or env CHILDSAFE_SIGNING_KEY (a path or the PEM text).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from childsafe_runtime.signing import KEY_ENV, KeyFileError, load_public_key, new_key_pair, public_key_sha256


def main(argv: list[str] | None = None) -> None:
    """Exit status 0 with the pair written, 1 (and why) when a key is already there; `childsafe` ignores returns."""
    parser = argparse.ArgumentParser(prog="childsafe keys", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="write release.key (private, mode 0600) and release.pub into a folder")
    new.add_argument("--out", type=Path, required=True, help="folder for the pair; existing keys are never replaced")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        private_path, public_path = new_key_pair(args.out.resolve())
    except KeyFileError as error:
        parser.exit(1, f"childsafe keys: {error}\n")
    print(f"private key: {private_path}  (mode 0600; keep it out of the repo and out of MLflow)")
    print(f"public key:  {public_path}  (sha256 {public_key_sha256(load_public_key(public_path))})")
    print(f"sign exports: export {KEY_ENV}={private_path}   (or childsafe export export.signing.key=...)")
    print(f"runtimes pin: childsafe-filter --public-key {public_path} BUNDLE INPUT")


if __name__ == "__main__":
    main()
