"""`childsafe promote`: promote a candidate through the safety gates (tracking/promote.py)."""

from __future__ import annotations

from core.hydra_app import run_stage
from tracking.promote import promote


def main() -> None:
    run_stage("promote", promote)


if __name__ == "__main__":
    main()
