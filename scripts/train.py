"""`childsafe train`: train one model and record it in MLflow (models/train.py)."""

from __future__ import annotations

from core.hydra_app import run_stage
from models.train import objective


def main() -> None:
    run_stage("train", objective)


if __name__ == "__main__":
    main()
