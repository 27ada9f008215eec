"""Run one experiment end to end: `childsafe pipeline experiment=age_synthetic`.

Each stage runs as its own `childsafe <stage>` process (its own Hydra app and linked MLflow run);
the pipeline records which stages completed in `<log_dir>/pipeline/<experiment>/state.json` and a
re-run picks up after the last completed one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from scripts.hydra_app import console, run_stage
from tracking.errors import PromotionRefused, WorkbenchError


def state_folder(cfg: DictConfig) -> Path:
    return Path(cfg.paths.log_dir) / "pipeline" / cfg.experiment_name


def decision_file(cfg: DictConfig) -> Path:
    """Where promote writes its decision, so a refusal can be told apart from a failure."""
    return state_folder(cfg) / "promotion.json"


def stage_arguments(cfg: DictConfig, stage: str) -> list[str]:
    folders = [f"paths.log_dir={cfg.paths.log_dir}", f"paths.cache_dir={cfg.paths.cache_dir}"]
    base = {
        "train": [f"experiment={cfg.experiment_name}"],
        "calibrate": [f"train_task={cfg.experiment_name}"],
        "evaluate": [f"train_task={cfg.experiment_name}"],
        "export": [f"train_task={cfg.experiment_name}"],
        "promote": [
            f"model_name=childsafe-{cfg.experiment_name}",
            f"decision_file={decision_file(cfg)}",
        ],
    }[stage]
    return [*base, *folders, *cfg.overrides.get(stage, [])]


def _refusal(cfg: DictConfig) -> str | None:
    """Why promote refused, from the decision it wrote; None when it failed before deciding (or was not run)."""
    if not decision_file(cfg).exists():
        return None
    decision = json.loads(decision_file(cfg).read_text())
    return None if decision["promoted"] else "; ".join(decision["reasons"])


def pipeline(cfg: DictConfig) -> list[str]:
    state_file = state_folder(cfg) / "state.json"
    state_file.parent.mkdir(parents=True, exist_ok=True)
    done = [] if cfg.fresh or not state_file.exists() else json.loads(state_file.read_text())["completed"]
    for stage in cfg.stages:
        if stage in done:
            console.print(f"[dim]{stage}: already completed, skipped (fresh=true to redo)[/]")
            continue
        console.rule(f"[bold]{cfg.experiment_name}: {stage}")
        command = [sys.executable, "-m", "scripts.cli", stage, *stage_arguments(cfg, stage)]
        decision_file(cfg).unlink(missing_ok=True)
        if subprocess.run(command).returncode != 0:
            refusal = _refusal(cfg)
            if refusal:
                raise PromotionRefused(
                    f"{cfg.experiment_name}: promote refused: the champion stays ({refusal}). "
                    "The candidate stays registered, with the decision on it. Train a better one "
                    f"(`childsafe pipeline experiment={cfg.experiment_name} fresh=true`); re-running as is retries "
                    "promote alone."
                )
            raise WorkbenchError(
                f"Stage '{stage}' of experiment {cfg.experiment_name} failed (see its output above). "
                f"Fix it and re-run the same command: the pipeline resumes at '{stage}'."
            )
        done.append(stage)
        state_file.write_text(json.dumps({"experiment": cfg.experiment_name, "completed": done}))
    console.print(f"[bold green]{cfg.experiment_name}: pipeline complete[/] ({', '.join(done)})")
    return done


def main() -> None:
    # `experiment` is a config group of the train stage; here it only names which one to chain.
    sys.argv = [f"experiment_name={a.split('=', 1)[1]}" if a.startswith("experiment=") else a for a in sys.argv]
    run_stage("pipeline", pipeline)


if __name__ == "__main__":
    main()
