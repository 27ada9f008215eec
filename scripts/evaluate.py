"""`childsafe evaluate`: evaluate a trained, calibrated model (evaluation/evaluate.py)."""

from __future__ import annotations

from core.hydra_app import run_stage
from evaluation.evaluate import evaluate


def main() -> None:
    run_stage("evaluate", evaluate)


if __name__ == "__main__":
    main()
