"""`childsafe pipeline`: run one experiment end to end (tracking/pipeline.py)."""

from __future__ import annotations

import functools
import sys

from core.hydra_app import run_stage
from tracking.pipeline import pipeline, split_arguments


def main() -> None:
    own, direct = split_arguments(sys.argv[1:])
    sys.argv = [sys.argv[0], *own]
    run_stage("pipeline", functools.partial(pipeline, direct=tuple(direct)))


if __name__ == "__main__":
    main()
