"""`childsafe sync`: deliver spooled MLflow calls (tracking/sync.py)."""

from __future__ import annotations

from core.hydra_app import run_stage
from tracking.sync import sync


def main() -> None:
    run_stage("sync", sync)


if __name__ == "__main__":
    main()
