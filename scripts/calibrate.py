"""`childsafe calibrate`: calibrate a trained run on its calib split (calibration/calibrate.py)."""

from __future__ import annotations

from calibration.calibrate import calibrate
from core.hydra_app import run_stage


def main() -> None:
    run_stage("calibrate", calibrate)


if __name__ == "__main__":
    main()
