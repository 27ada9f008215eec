"""`childsafe <stage> [hydra overrides]`: one command, one sub-command per pipeline stage.

Kept free of torch/lightning/mlflow imports so `childsafe --help` answers at once; a stage's
module is imported only when that stage runs. `childsafe <stage> --help` of a Hydra stage (one
with `configs/<stage>.yaml`) is answered here too, before the stage module (which imports torch)
is loaded, and so is a configuration mistake (`early_config_check`).

Offline by default: before any stage (and so MLflow) is imported, `main` turns MLflow's usage telemetry off
unless the user has set the variables themselves; the stages' own subprocesses (the pipeline runs each stage
as `python -m scripts.cli`) inherit them. docs/privacy.md lists what else was checked for phoning home.
"""

from __future__ import annotations

import importlib
import os
import sys

from core.paths import CONFIG_DIR

STAGES = {
    "train": ("scripts.train", "train a model (Hydra overrides follow, e.g. experiment=age_synthetic)"),
    "calibrate": ("scripts.calibrate", "calibrate a trained run on its calib split, choose certified operating points"),
    "evaluate": ("scripts.evaluate", "metrics, gate analysis, fairness slices, robustness and an HTML report"),
    "compare": ("scripts.compare", "judge two evaluated models: childsafe compare MODEL@champion MODEL@candidate"),
    "export": ("scripts.export", "export a calibrated run as an ONNX bundle, behind the parity gate"),
    "promote": ("scripts.promote", "move the registry's champion to the candidate if no safety gate got worse"),
    "keys": (
        "scripts.keys",
        "release signing keys: childsafe keys new --out DIR (Ed25519; the private key never enters the repo)",
    ),
    "sync": ("scripts.sync", "deliver what runs spooled while the MLflow server was away"),
    "shard": ("scripts.shard", "write a cache to data.store (a folder or s3://bucket/prefix) as checked shards"),
    "bench": ("scripts.bench", "training throughput vs a plain PyTorch loop, loader, rendering, MFU, ORT vs eager"),
    "pipeline": (
        "scripts.pipeline",
        "train, calibrate, evaluate, export, promote one experiment; resumes where it stopped",
    ),
}

# MLflow >= 3.2 sends usage telemetry unless one of the first two is "true" (mlflow/telemetry/utils.py,
# is_telemetry_disabled), and it decides when `mlflow` is imported; DO_NOT_TRACK is the cross-tool convention
# (huggingface_hub honours it too). HF_HUB_OFFLINE makes timm/huggingface_hub use their local cache only, as
# models/backbones.py does for torchvision weights: nothing downloads silently.
OFFLINE_DEFAULTS = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1"}

# compare (positional run ids) and pipeline (overrides it hands on to the stages) rewrite their arguments before
# validating them; their modules import neither torch nor Lightning, so their own validation is already early.
REWRITES_ARGUMENTS = frozenset({"compare", "pipeline"})

USAGE = """usage: childsafe <stage> [hydra overrides ...]

Stages:
{stages}

Examples:
  childsafe train experiment=age_synthetic trainer.max_epochs=3
  childsafe train experiment=content_synthetic debug=smoke
  childsafe train --help          (the stage's config groups, keys and defaults)
"""


def early_config_check(stage: str, args: list[str]) -> bool:
    """Validate the stage's overrides with Hydra alone, before its module imports torch and Lightning (7 s on an
    idle 2-core machine, 20 s under load, to report a typo). False, with the message printed, when refused.

    The stage validates again when it starts as a Hydra app (one more composition, well under a second): run as
    `python -m scripts.<stage>` it has no `childsafe` in front of it.
    """
    from hydra.errors import OverrideParseException

    from core.errors import WorkbenchError
    from core.hydra_app import errors, prepare, register_resolvers

    register_resolvers()
    try:
        prepare(stage, args)
    except (WorkbenchError, OverrideParseException) as error:
        errors.print(f"[bold red]Configuration error:[/] {error}")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    for name, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(name, value)  # a value the user set, "false" included, is theirs to keep
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
    hydra_stage = (CONFIG_DIR / f"{stage}.yaml").is_file()
    if any(arg in ("-h", "--help") for arg in rest) and hydra_stage:
        from core.stage_help import stage_help

        print(stage_help(stage))
        return 0
    checkable = hydra_stage and stage not in REWRITES_ARGUMENTS and "--hydra-help" not in rest
    if checkable and not early_config_check(stage, rest):
        return 2
    module = importlib.import_module(STAGES[stage][0])
    # Lightning's DDP launcher starts the other ranks by re-running `__main__` with the same arguments;
    # `childsafe` itself would need the stage name first, so the stage module stands in for it.
    sys.modules["__main__"].__spec__ = module.__spec__
    sys.argv = [module.__file__, *rest]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
