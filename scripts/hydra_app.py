"""How every stage starts: check the overrides, then hand over to `hydra.main`.

Hydra reports a mistyped key as "not in struct" and never checks value types, because YAML
configs are untyped. Checking here first lets every stage stop before any work with a message
that names the key and the valid options.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.tree import Tree

from tracking.errors import WorkbenchError
from tracking.mlflow_run import REPO_ROOT, default_tracking_uri, ensure_experiment, probe_writable

CONFIG_DIR = REPO_ROOT / "configs"
HYDRA_FLAGS_WITH_VALUE = {"--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd", "--info", "-i"}
_ABSENT = object()
console = Console()
errors = Console(stderr=True, soft_wrap=True)


def on_gpu(gpu_value: Any, cpu_value: Any, *, _root_: DictConfig) -> Any:
    """`${on_gpu:A,B}`: A when `trainer.accelerator` will train on a CUDA GPU, else B.

    The GPU fast-path switches (bf16, channels_last, pinned memory, ...) and GPU-only features
    (SyncBatchNorm) follow the device actually used, so `accelerator=auto` gets them only on a GPU.
    """
    accelerator = OmegaConf.select(_root_, "trainer.accelerator", default="auto")
    if accelerator == "auto":
        import torch

        return gpu_value if torch.cuda.is_available() else cpu_value
    return gpu_value if accelerator in ("gpu", "cuda") else cpu_value


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))
    if not OmegaConf.has_resolver("on_gpu"):
        OmegaConf.register_new_resolver("on_gpu", on_gpu)


def _value_overrides(argv: list[str]) -> list[str]:
    """The `key=value` arguments, without Hydra's own flags."""
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in HYDRA_FLAGS_WITH_VALUE
        else:
            overrides.append(arg)
    return overrides


def _is_group(key: str) -> bool:
    return (CONFIG_DIR / key.lstrip("+~").replace(".", "/")).is_dir()


def _explain_missing_key(error: Exception, base: DictConfig) -> str:
    text = str(error)
    marker = "Could not override '"
    key = text.split(marker, 1)[1].split("'", 1)[0] if marker in text else None
    return text if key is None else _unknown_key_message(key, base)


def _unknown_key_message(key: str, base: DictConfig) -> str:
    """Name the first part of `key` that does not exist, with its closest valid sibling."""
    parts, parent = key.split("."), base
    depth = 0
    while depth < len(parts) - 1 and isinstance(parent.get(parts[depth]), DictConfig):
        parent, depth = parent[parts[depth]], depth + 1
    parent_path, leaf = ".".join(parts[:depth]), parts[depth]
    options = sorted(str(k) for k in parent) if isinstance(parent, DictConfig) else []
    close = difflib.get_close_matches(leaf, options, n=1)
    hint = f" Did you mean {parent_path + '.' if parent_path else ''}{close[0]}?" if close else ""
    return (
        f"Unknown config key '{key}'.{hint} Valid keys under '{parent_path or '<root>'}': {', '.join(options)}. "
        f"To add a new key on purpose, write +{key}=..."
    )


def _check_swept_keys(base: DictConfig, overrides: list[str]) -> None:
    """Swept values are left out of composition here (each job composes its own), but their keys must exist."""
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if not override.is_sweep_override() or override.is_add() or _is_group(key) or key.startswith("hydra."):
            continue
        if OmegaConf.select(base, key, default=_ABSENT, throw_on_missing=False) is _ABSENT:
            raise WorkbenchError(_unknown_key_message(key, base))


def _check_types(base: DictConfig, overrides: list[str]) -> None:
    """Reject a value whose type cannot be what the default's type is (YAML carries no schema)."""
    parser = OverridesParser.create()
    for override in parser.parse_overrides([o for o in overrides if not _is_group(o.split("=", 1)[0])]):
        if override.is_sweep_override() or override.is_delete():
            continue
        key = override.key_or_group
        default = OmegaConf.select(base, key, throw_on_missing=False)
        value = override.value()
        if default is None or value is None or isinstance(default, DictConfig | list) or OmegaConf.is_list(default):
            continue
        expected: tuple[type, ...] = (int, float) if isinstance(default, float) else (type(default),)
        if (isinstance(value, bool) and not isinstance(default, bool)) or not isinstance(value, expected):
            raise WorkbenchError(
                f"Config key '{key}' expects {type(default).__name__} (default {default!r}), "
                f"got {override.input_line!r}."
            )


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Keys left at `???`, found without resolving interpolations (Hydra's own nodes need a running app)."""
    if isinstance(node, dict):
        return [m for k, v in node.items() for m in _missing_keys(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if node == "???" else []


def _check_writable(cfg: DictConfig) -> None:
    for key in ("paths.log_dir", "paths.cache_dir"):
        folder = Path(OmegaConf.select(cfg, key))
        try:
            probe_writable(folder)
        except OSError as error:
            raise WorkbenchError(
                f"Output folder {key}={folder} is not writable ({error.strerror or error}). "
                f"Choose another with {key}=/a/writable/folder."
            ) from error


def _parse_override(override: str):
    try:
        return OverridesParser.create().parse_override(override)
    except HydraException as error:
        raise WorkbenchError(
            f"Cannot read the override {override!r} ({error}). Quote list items that contain '=' or ',', "
            "e.g. 'overrides.train=[\"data.root=/data/UTKFace\"]'."
        ) from error


def validate(config_name: str, argv: list[str]) -> DictConfig:
    """Compose the config as the stage will, and turn each kind of mistake into a plain message."""
    overrides = _value_overrides(argv)
    plain = [o for o in overrides if not _parse_override(o).is_sweep_override()]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        groups_only = [o for o in plain if _is_group(o.split("=", 1)[0])]
        try:
            base = compose(config_name, overrides=groups_only)
            cfg = compose(config_name, overrides=plain, return_hydra_config=True)
        except (ConfigCompositionException, MissingConfigException) as error:
            message = str(error)
            if "not in struct" in str(error.__cause__ or "") or "Could not override" in message:
                message = _explain_missing_key(error, base)
            raise WorkbenchError(message) from error
    GlobalHydra.instance().clear()
    missing = _missing_keys({k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"})
    if missing:
        raise WorkbenchError(
            f"Config key(s) {', '.join(missing)} must be given, e.g. `{missing[0]}=...`: they have no default."
        )
    _check_swept_keys(base, overrides)
    _check_types(base, plain)
    _check_writable(cfg)
    return cfg


def run_stage(config_name: str, task: Callable[[DictConfig], Any]) -> None:
    """Validate `sys.argv`, then run `task` as a Hydra app; user errors exit 2 without a trace."""
    register_resolvers()
    try:
        validate(config_name, sys.argv[1:])
    except (WorkbenchError, OverrideParseException) as error:
        errors.print(f"[bold red]Configuration error:[/] {error}")
        sys.exit(2)

    hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(StageApp(task))()


@dataclass(frozen=True)
class StageApp:
    """A stage as Hydra's task function; its return value goes to the sweeper.

    A module-level class rather than a closure: launchers that run jobs in other processes (joblib,
    submitit) pickle it, and a closure would drag this module's consoles (and their locks) along.
    """

    task: Callable[[DictConfig], Any]

    def __call__(self, cfg: DictConfig) -> Any:
        print_config_tree(cfg)
        try:
            return self.task(cfg)
        except WorkbenchError as error:
            errors.print(f"[bold red]Error:[/] {error}")
            sys.exit(2)


def sweep_tags() -> dict[str, str]:
    """A multirun job's sweep (its folder's name) and trial number, so a sweep's MLflow runs can be found together."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    hydra_cfg = HydraConfig.get()
    return {"sweep.id": Path(hydra_cfg.sweep.dir).name, "sweep.trial": str(hydra_cfg.job.num)}


class CreateTrackingStore(Callback):
    """Create the MLflow store and the sweep's experiment once, in the launching process, before any job starts.

    Parallel jobs against a fresh SQLite store would otherwise all race to run its migrations.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        experiment = OmegaConf.select(config, "logger.mlflow.experiment_name")
        if experiment:
            ensure_experiment(default_tracking_uri(), experiment)


def print_config_tree(cfg: DictConfig) -> None:
    tree = Tree("[bold]config", guide_style="dim")
    for key, value in cfg.items():
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(f"[bold]{key}").add(Syntax(text, "yaml"))
    console.print(tree)


def show_metrics(metrics: dict[str, float], title: str, notes: dict[str, str]) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in sorted(metrics):
        table.add_row(name, f"{metrics[name]:.4f}")
    console.print(table)
    for label, value in notes.items():
        console.print(f"[bold]{label}:[/] {value}")
