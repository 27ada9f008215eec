"""`childsafe export`: export a calibrated run as an ONNX bundle (export/pipeline.py)."""

from __future__ import annotations

from core.hydra_app import run_stage
from export.pipeline import export


def main() -> None:
    run_stage("export", export)


if __name__ == "__main__":
    main()
