"""`childsafe bench`: where training and inference time goes (tracking/bench.py)."""

from __future__ import annotations

from core.hydra_app import run_stage
from tracking.bench import bench


def main() -> None:
    run_stage("bench", bench)


if __name__ == "__main__":
    main()
