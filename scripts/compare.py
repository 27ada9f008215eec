"""`childsafe compare A B`: compare evaluate runs for a reviewer (tracking/compare.py)."""

from __future__ import annotations

import sys

from core.hydra_app import run_stage
from tracking.compare import compare


def main() -> None:
    # `childsafe compare A B` means runs=[A,B]; quoted, so `@` and `/` in model references parse as text.
    positional = [a for a in sys.argv[1:] if "=" not in a and not a.startswith("-")]
    if positional:
        rest = [a for a in sys.argv[1:] if a not in positional]
        sys.argv = [sys.argv[0], f"runs=[{','.join(repr(a) for a in positional)}]", *rest]
    run_stage("compare", compare)


if __name__ == "__main__":
    main()
