"""`childsafe <stage> [hydra overrides]`: one command, one sub-command per pipeline stage.

Kept free of torch/lightning/mlflow imports so `childsafe --help` answers at once; a stage's
module is imported only when that stage runs. `childsafe <stage> --help` of a Hydra stage (one
with `configs/<stage>.yaml`) is answered here too, before the stage module (which imports torch)
is loaded.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

STAGES = {
    "train": ("scripts.train", "train a model (Hydra overrides follow, e.g. experiment=age_synthetic)"),
    "calibrate": ("scripts.calibrate", "calibrate a trained run on its calib split, choose certified operating points"),
    "evaluate": ("scripts.evaluate", "metrics, gate analysis, fairness slices, robustness and an HTML report"),
    "compare": ("scripts.compare", "side-by-side metrics of MLflow runs with deltas: childsafe compare RUN_A RUN_B"),
    "export": ("scripts.export", "export a calibrated run as an ONNX bundle, behind the parity gate"),
    "promote": ("scripts.promote", "move the registry's champion to the candidate if no safety gate got worse"),
    "keys": (
        "scripts.keys",
        "release signing keys: childsafe keys new --out DIR (Ed25519; the private key never enters the repo)",
    ),
    "sync": ("scripts.sync", "deliver what runs spooled while the MLflow server was away"),
    "bench": ("scripts.bench", "training throughput vs a plain PyTorch loop, loader, rendering, MFU, ORT vs eager"),
    "pipeline": (
        "scripts.pipeline",
        "train, calibrate, evaluate, export, promote one experiment; resumes where it stopped",
    ),
}

USAGE = """usage: childsafe <stage> [hydra overrides ...]

Stages:
{stages}

Examples:
  childsafe train experiment=age_synthetic trainer.max_epochs=3
  childsafe train experiment=content_synthetic debug=smoke
  childsafe train --help          (the stage's config groups, keys and defaults)
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    stages = "\n".join(f"  {name:<10} {summary}" for name, (_, summary) in STAGES.items())
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE.format(stages=stages))
        return 0
    stage, rest = args[0], args[1:]
    if stage not in STAGES:
        print(f"childsafe: unknown stage {stage!r}. Valid stages: {', '.join(STAGES)}.\n", file=sys.stderr)
        print(USAGE.format(stages=stages), file=sys.stderr)
        return 2
    if any(arg in ("-h", "--help") for arg in rest) and (CONFIG_DIR / f"{stage}.yaml").is_file():
        from scripts.stage_help import stage_help

        print(stage_help(stage))
        return 0
    module = importlib.import_module(STAGES[stage][0])
    # Lightning's DDP launcher starts the other ranks by re-running `__main__` with the same arguments;
    # `childsafe` itself would need the stage name first, so the stage module stands in for it.
    sys.modules["__main__"].__spec__ = module.__spec__
    sys.argv = [module.__file__, *rest]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
