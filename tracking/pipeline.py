"""Run one experiment end to end: `childsafe pipeline experiment=age_synthetic`.

Each stage runs as its own `childsafe <stage>` process (its own Hydra app and linked MLflow run).
The pipeline records, for each completed stage, the config it ran with (composed with Hydra,
resolved except where Hydra's runtime decides where files go), what it takes from the environment
(the tracking store; export's signing key) and, for train, a fingerprint of the data files, in
`<log_dir>/pipeline/<experiment>/state.json`. A re-run skips a stage only when both are
unchanged and no earlier stage re-ran; otherwise it re-runs that stage and every stage after it,
and says why.

Overrides for a stage can be given directly (`trainer.max_epochs=3`): each goes to the one stage
whose config has that key or group; one that several stages have must use `overrides.<stage>=[...]`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from childsafe_runtime.signing import KEY_ENV
from omegaconf import DictConfig, OmegaConf

from core.errors import PromotionRefused, WorkbenchError
from core.hydra_app import compose_base, console, has_key, prepare, unknown_key_message
from core.paths import CONFIG_DIR
from core.stage_help import config_groups
from tracking.mlflow_run import default_tracking_uri

# Parts of a stage's config that say where things go, not what is computed.
NOT_RESULTS = ("hydra", "paths")
# What `paths.output_dir` reads as in a stage's key: it is a new folder on every run (under the pipeline's own
# Hydra run, `${hydra:runtime.output_dir}` resolves), and the keys that point into it change nothing computed.
OUTPUT_DIR = "<this run's output folder>"


def state_folder(cfg: DictConfig) -> Path:
    return Path(cfg.paths.log_dir) / "pipeline" / cfg.experiment_name


def decision_file(cfg: DictConfig) -> Path:
    """Where promote writes its decision, so a refusal can be told apart from a failure."""
    return state_folder(cfg) / "promotion.json"


def _base_arguments(cfg: DictConfig, stage: str) -> list[str]:
    """What the pipeline itself tells each stage: which experiment, and its folders."""
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
    return [*base, *folders]


@functools.lru_cache(maxsize=64)
def compose_stage(stage: str, arguments: tuple[str, ...]) -> DictConfig:
    """A stage's config, checked as its own process will check it (a bad key or unwritable folder stops here).

    Cached: it depends only on the arguments and the config files, which do not change while a
    pipeline runs, and composing costs about half a second a stage.
    """
    return prepare(stage, list(arguments))[0]


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def debug_name(cfg: DictConfig, routed: dict[str, list[str]]) -> str | None:
    """The `debug=<name>` train runs with, if any (the last one given wins, as in Hydra)."""
    train = [*routed.get("train", []), *cfg.overrides.get("train", [])]
    values = [o.split("=", 1)[1] for o in train if "=" in o and _override_key(o) == "debug"]
    return values[-1] if values else None


def stage_arguments(cfg: DictConfig, stage: str, routed: dict[str, list[str]] | None = None) -> list[str]:
    """Base arguments, then what a debug run implies for this stage, then the user's overrides (last wins)."""
    routed = routed or {}
    debug = cfg.debug_runs.get(debug_name(cfg, routed) or "", {})
    implied = list(debug.get("overrides", {}).get(stage, []))
    return [*_base_arguments(cfg, stage), *implied, *routed.get(stage, []), *cfg.overrides.get(stage, [])]


def route(cfg: DictConfig, direct: list[str]) -> dict[str, list[str]]:
    """Send each direct override to the one stage whose config has its key or group."""
    groups = {stage: config_groups(stage) for stage in cfg.stages}
    group_overrides = [o for o in direct if (CONFIG_DIR / _override_key(o)).is_dir()]
    routed: dict[str, list[str]] = {stage: [] for stage in cfg.stages}
    for override in group_overrides:
        _send(override, [s for s in cfg.stages if _override_key(override) in groups[s]], routed, "config group")
    bases = {stage: compose_base(stage, [*_base_arguments(cfg, stage), *routed[stage]]) for stage in cfg.stages}
    for override in direct:
        if override not in group_overrides:
            key = _override_key(override)
            owners = [s for s in cfg.stages if has_key(bases[s], key)]
            near = [s for s in cfg.stages if has_key(bases[s], key.split(".", 1)[0])]
            if not owners and len(near) == 1:  # a typo in the one stage with that section: name the key meant
                raise WorkbenchError(f"pipeline, {near[0]} stage: {unknown_key_message(key, bases[near[0]])}")
            _send(override, owners, routed, "config key")
    return routed


def _send(override: str, owners: list[str], routed: dict[str, list[str]], kind: str) -> None:
    key = _override_key(override)
    if len(owners) == 1:
        routed[owners[0]].append(override)
        return
    where = f"is a {kind} of {', '.join(owners)}" if owners else f"is no {kind} of any stage ({', '.join(routed)})"
    stage = owners[0] if owners else "<stage>"
    raise WorkbenchError(
        f"pipeline: '{key}' {where}, so the pipeline cannot tell which stage '{override}' is for. "
        f"Name the stage: 'overrides.{stage}=[\"{override}\"]'."
    )


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def _resolved_leaves(cfg: DictConfig, raw: Any, prefix: str = "") -> Any:
    """`raw` with each leaf resolved where it can be now (`${on_gpu:...}`, `${oc.env:...}`, references);
    a leaf that needs Hydra's runtime (`${hydra:...}`, only where files go) or reads the clock stays as written."""
    if isinstance(raw, dict):
        return {key: _resolved_leaves(cfg, value, f"{prefix}{key}.") for key, value in raw.items()}
    if isinstance(raw, list) or not (isinstance(raw, str) and "${" in raw) or "${now:" in raw:
        return raw  # a time (run names) differs on every run and changes nothing computed
    value = OmegaConf.select(cfg, prefix.rstrip("."), throw_on_resolution_failure=False, default=raw)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def stage_config(cfg: DictConfig) -> dict[str, Any]:
    """What a stage computes from: its composed config, resolved, without where its outputs go."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # a writable copy: the cached one stays
    if has_key(cfg, "paths.output_dir"):
        cfg.paths.output_dir = OUTPUT_DIR
    raw = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k not in NOT_RESULTS}
    return _resolved_leaves(cfg, raw)


def environment_inputs(stage: str) -> dict[str, str | None]:
    """What a stage reads from the environment rather than its config: the tracking store it reads and
    writes, and for export the release key it signs with (its public fingerprint, never the key)."""
    inputs: dict[str, str | None] = {"tracking_uri": default_tracking_uri()}
    if stage == "export":
        source = os.environ.get(KEY_ENV)
        inputs["signing_key"] = hashlib.sha256(source.encode()).hexdigest() if source else None
    return inputs


def data_fingerprint(train_cfg: DictConfig) -> str | None:
    """Names, sizes and modification times of the files under `data.root` (licensed data), hashed.

    Cheap (no image is read) and enough to notice files added, removed or replaced. None for
    synthetic data, which its config defines entirely.
    """
    if not has_key(train_cfg, "data.root"):
        return None
    root = Path(OmegaConf.select(train_cfg, "data.root"))
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            stat = (Path(folder) / name).stat()
            digest.update(f"{Path(folder, name).relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def why_run(stage: str, record: dict | None, current: dict) -> str | None:
    """Why `stage` must run again given what it last ran with, or None when nothing changed."""
    if record is None:
        return "no completed run of it is recorded"
    before, now = _flat(record["config"]), _flat(current["config"])
    changed = sorted(k for k in before.keys() | now.keys() if k not in before or k not in now or before[k] != now[k])
    if changed:
        shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        return f"{stage} config changed: {shown}"
    if record.get("data") != current.get("data"):
        return f"{stage} data changed: the files under data.root differ from the last run"
    changed = sorted(k for k, v in current["environment"].items() if record.get("environment", {}).get(k) != v)
    if changed:
        return f"{stage} environment changed: {', '.join(changed)} (MLFLOW_TRACKING_URI, CHILDSAFE_SIGNING_KEY)"
    return None


def _refusal(cfg: DictConfig) -> str | None:
    """Why promote refused, from the decision it wrote; None when it failed before deciding (or was not run)."""
    if not decision_file(cfg).exists():
        return None
    decision = json.loads(decision_file(cfg).read_text())
    return None if decision["promoted"] else "; ".join(decision["reasons"])


def _load_state(state_file: Path, fresh: bool) -> dict[str, dict]:
    """Completed stages with what they ran with; a state from before configs were recorded counts as none."""
    if fresh or not state_file.exists():
        return {}
    return json.loads(state_file.read_text()).get("stages", {})


def _save_state(state_file: Path, experiment: str, records: dict[str, dict]) -> None:
    state = {"experiment": experiment, "completed": list(records), "stages": records}
    state_file.write_text(json.dumps(state, indent=2))


def _run(cfg: DictConfig, stage: str, arguments: list[str], debug: str | None) -> None:
    command = [sys.executable, "-m", "scripts.cli", stage, *arguments]
    decision_file(cfg).unlink(missing_ok=True)
    if subprocess.run(command).returncode == 0:
        return
    refusal = _refusal(cfg)
    if refusal and debug and cfg.debug_runs[debug].get("promotion_refused_as_expected"):
        console.print(f"[yellow]promote refused, as it must for a debug={debug} run:[/] {refusal}")
        return
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


def pipeline(cfg: DictConfig, direct: tuple[str, ...] = ()) -> list[str]:
    """Compose and check every stage first (a bad key or unwritable folder stops before training), then run."""
    routed = route(cfg, list(direct)) if direct else {}
    debug = debug_name(cfg, routed)
    arguments = {stage: stage_arguments(cfg, stage, routed) for stage in cfg.stages}
    composed = {stage: compose_stage(stage, tuple(arguments[stage])) for stage in cfg.stages}
    current = {
        stage: {
            "config": stage_config(c),
            "data": data_fingerprint(c) if stage == "train" else None,
            "environment": environment_inputs(stage),
        }
        for stage, c in composed.items()
    }
    state_file = state_folder(cfg) / "state.json"
    state_file.parent.mkdir(parents=True, exist_ok=True)
    records = _load_state(state_file, cfg.fresh)
    rerun: str | None = None
    for stage in cfg.stages:
        reason = (
            f"{rerun} ran, so every later stage runs too"
            if rerun
            else why_run(stage, records.get(stage), current[stage])
        )
        if reason is None:
            console.print(f"[dim]{stage}: already completed with this config and data, skipped (fresh=true to redo)[/]")
            continue
        rerun = rerun or stage
        console.rule(f"[bold]{cfg.experiment_name}: {stage}")
        console.print(f"{stage}: {reason}")
        later = cfg.stages[cfg.stages.index(stage) :]
        records = {s: r for s, r in records.items() if s not in later}  # what follows must re-run on this one
        _save_state(state_file, cfg.experiment_name, records)
        _run(cfg, stage, arguments[stage], debug)
        records[stage] = current[stage]
        _save_state(state_file, cfg.experiment_name, records)
    done = list(records)
    console.print(f"[bold green]{cfg.experiment_name}: pipeline complete[/] ({', '.join(done)})")
    return done


def split_arguments(argv: list[str]) -> tuple[list[str], list[str]]:
    """The pipeline's own arguments (its keys, Hydra flags; `experiment=` names the experiment) and the rest."""
    own_keys = {*OmegaConf.load(CONFIG_DIR / "pipeline.yaml"), *config_groups("pipeline")}
    own, direct = [], []
    for arg in argv:
        if arg.startswith("experiment="):
            own.append(f"experiment_name={arg.split('=', 1)[1]}")
        elif arg.startswith("-") or "=" not in arg or _override_key(arg).split(".", 1)[0] in own_keys:
            own.append(arg)
        else:
            direct.append(arg)
    return own, direct
