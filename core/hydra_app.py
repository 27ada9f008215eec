"""How every stage starts: check the overrides, then hand over to `hydra.main`.

Hydra reports a mistyped key as "not in struct" and never checks value types, because YAML
configs are untyped. Checking here first lets every stage stop before any work with a message
that names the key and the valid options.
"""

from __future__ import annotations

import difflib
import sys
import tempfile
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
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.tree import Tree

from core.errors import WorkbenchError
from core.paths import CONFIG_DIR, workbench_home
from core.stage_help import config_groups, stage_help

SEARCHPATH = "hydra.searchpath="  # `hydra.searchpath=[file:///team/configs]`: more folders to find options in
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
    if not OmegaConf.has_resolver("workbench_home"):
        OmegaConf.register_new_resolver("workbench_home", lambda: str(workbench_home()))
    if not OmegaConf.has_resolver("config_dir"):
        OmegaConf.register_new_resolver("config_dir", lambda: str(CONFIG_DIR))
    if not OmegaConf.has_resolver("on_gpu"):
        OmegaConf.register_new_resolver("on_gpu", on_gpu)


def _arguments(argv: list[str]) -> list[tuple[str, bool]]:
    """Each argument with whether it is a `key=value` override (not a Hydra flag nor a flag's value)."""
    marked, skip = [], False
    for arg in argv:
        marked.append((arg, not skip and not arg.startswith("-")))
        skip = not skip and arg in HYDRA_FLAGS_WITH_VALUE
    return marked


def _value_overrides(argv: list[str]) -> list[str]:
    """The `key=value` arguments, without Hydra's own flags."""
    return [arg for arg, is_override in _arguments(argv) if is_override]


def _is_group(key: str) -> bool:
    return (CONFIG_DIR / key.lstrip("+~").replace(".", "/")).is_dir()


def raw_node(cfg: DictConfig, key: str) -> Any:
    """The value at `key` as written, interpolations unresolved, or `_ABSENT`.

    Resolving could need a running Hydra app (`${hydra:...}`) or torch (`${on_gpu:...}`); whether a
    key exists, and what type its default has, needs neither.
    """
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def has_key(cfg: DictConfig, key: str) -> bool:
    return raw_node(cfg, key) is not _ABSENT


def _explain_override_error(error: Exception, base: DictConfig) -> str:
    text = str(error)
    marker = "Could not override '"
    key = text.split(marker, 1)[1].split("'", 1)[0] if marker in text else None
    if key is None:
        return text
    if has_key(base, key):  # the key exists, so its value is what failed; Hydra's cause says how
        return f"Cannot set '{key}': {str(error.__cause__ or text).splitlines()[0]}."
    return unknown_key_message(key, base)


def unknown_key_message(key: str, base: DictConfig) -> str:
    """Name the first part of `key` that does not exist, with its closest valid sibling (never `key` itself)."""
    parts, parent = key.split("."), OmegaConf.to_container(base, resolve=False)
    depth = 0
    while depth < len(parts) - 1 and isinstance(parent.get(parts[depth]), dict):
        parent, depth = parent[parts[depth]], depth + 1
    parent_path, leaf = ".".join(parts[:depth]), parts[depth]
    options = sorted(str(k) for k in parent) if isinstance(parent, dict) else []
    close = difflib.get_close_matches(leaf, [o for o in options if o != leaf], n=1)
    hint = f" Did you mean {parent_path + '.' if parent_path else ''}{close[0]}?" if close else ""
    return (
        f"Unknown config key '{key}'.{hint} Valid keys under '{parent_path or '<root>'}': {', '.join(options)}. "
        f"To add a new key on purpose, write +{key}=..."
    )


def _explain_group_error(config_name: str, error: Exception) -> str:
    """A group this stage does not compose (e.g. `debug=smoke` given to calibrate) says whose group it is."""
    text = str(error)
    if "No match in the defaults list" not in text or "Could not override '" not in text:
        return text
    group = text.split("Could not override '", 1)[1].split("'", 1)[0]
    owners = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if group in config_groups(p.stem))
    return (
        f"The {config_name} stage has no config group '{group}' (its groups: {', '.join(config_groups(config_name))}). "
        f"'{group}' belongs to: {', '.join(owners) or 'no stage'}; give it to that stage instead."
    )


def _check_swept_keys(base: DictConfig, overrides: list[str]) -> None:
    """Swept values are left out of composition here (each job composes its own), but their keys must exist."""
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if not override.is_sweep_override() or override.is_add() or _is_group(key) or key.startswith("hydra."):
            continue
        if not has_key(base, key):
            raise WorkbenchError(unknown_key_message(key, base))


def _check_types(base: DictConfig, overrides: list[str]) -> None:
    """Reject a value whose type cannot be what the default's type is (YAML carries no schema).

    A default that is an interpolation or required (`???`) has no type to compare with.
    """
    parser = OverridesParser.create()
    for override in parser.parse_overrides([o for o in overrides if not _is_group(o.split("=", 1)[0])]):
        if override.is_sweep_override() or override.is_delete() or override.is_add():
            continue
        key = override.key_or_group
        default = raw_node(base, key)
        value = override.value()
        if default in (_ABSENT, None, "???") or value is None or isinstance(default, dict | list):
            continue
        if isinstance(default, str) and "${" in default:
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


# Every place a stage writes: folders, and (ending in _file) files whose folder must be writable.
OUTPUT_LOCATIONS = (
    "paths.log_dir",
    "paths.cache_dir",
    "hydra.run.dir",
    "hydra.sweep.dir",
    "export.release_dir",
    "decision_file",
    "docs_file",
)


def _unwritable(path: Path, is_file: bool) -> str | None:
    """Why `path` could not be written, found without creating anything (a run folder's name has a timestamp)."""
    if path.exists() and path.is_dir() == is_file:
        return f"{path} is a {'folder' if is_file else 'file'}"
    folder = path.parent if is_file or not path.exists() else path
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=folder):  # os.access cannot tell for root or read-only mounts
            return None
    except OSError as error:
        return f"cannot write in {folder}: {error.strerror or error}"


def _check_writable(cfg: DictConfig) -> None:
    for key in OUTPUT_LOCATIONS:
        if not has_key(cfg, key) or OmegaConf.select(cfg, key) is None:
            continue
        location = Path(OmegaConf.select(cfg, key))
        reason = _unwritable(location, key.endswith("_file"))
        if reason:
            kind = "file" if key.endswith("_file") else "folder"
            raise WorkbenchError(
                f"Output {kind} {key}={location} is not writable ({reason}). "
                f"Choose another with {key}=/a/writable/{'place.ext' if kind == 'file' else 'folder'}"
                f"{' (paths.output_dir sets it too)' if key.startswith('hydra.') else ''}."
            )


def _parse_override(override: str):
    try:
        return OverridesParser.create().parse_override(override)
    except HydraException as error:
        raise WorkbenchError(
            f"Cannot read the override {override!r} ({error}). Quote list items that contain '=' or ',', "
            "e.g. 'overrides.train=[\"data.root=/data/UTKFace\"]'."
        ) from error


def _rewrite(argument: str, base: DictConfig, overrides: list[str]) -> list[str]:
    """One override as Hydra should receive it.

    - `paths.output_dir=X` (lightning-hydra-template's habit) becomes `hydra.run.dir=X` and
      `hydra.sweep.dir=X`: the output folder *is* Hydra's run folder, so the two cannot disagree.
    - `key={a: b, ...}` on an existing plain mapping (such as `data.adapter.folder_classes`) that
      lacks some of those keys replaces the mapping (`~key +key={...}`); Hydra alone would merge,
      and refuse the new keys as "not in struct". With only known keys it stays a merge, which
      updates those entries. An object's settings (a mapping with `_target_`) always merge, and a
      new key there, or one a letter away from an existing key, is reported as a typo.
    """
    override = _parse_override(argument)
    key = override.key_or_group
    if override.is_sweep_override() or override.is_add() or override.is_delete() or _is_group(key):
        return [argument]
    if key == "paths.output_dir":
        given = [o for o in overrides if o.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
        if given:
            raise WorkbenchError(
                f"Give the output folder once: paths.output_dir is Hydra's run folder, and {given[0]} sets it too."
            )
        folder = argument.split("=", 1)[1]
        return [f"hydra.run.dir={folder}", f"hydra.sweep.dir={folder}"]
    default, value = raw_node(base, key), override.value()
    if not (isinstance(default, dict) and isinstance(value, dict)):
        return [argument]
    new_keys = [k for k in value if k not in default]
    for new_key in new_keys:  # an object's settings (`_target_`) merge; a near-miss is a typo, not a new entry
        if "_target_" in default or difflib.get_close_matches(str(new_key), list(default), n=1, cutoff=0.8):
            replace = (
                "" if "_target_" in default else f" To replace the whole mapping on purpose: ~{key} '+{argument}'."
            )
            raise WorkbenchError(unknown_key_message(f"{key}.{new_key}", base) + replace)
    return [f"~{key}", f"+{argument}"] if new_keys else [argument]


def compose_base(config_name: str, overrides: list[str]) -> DictConfig:
    """The stage's config with only the group choices among `overrides`: what each key is checked against.

    No other check runs, so a caller can ask which keys a stage has before every required key is known.
    """
    groups = [o for o in overrides if _is_group(o.split("=", 1)[0]) and not _parse_override(o).is_sweep_override()]
    groups += [o for o in overrides if o.startswith(SEARCHPATH)]  # a team's own config folders, searched too
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name, overrides=groups)
    except (ConfigCompositionException, MissingConfigException) as error:
        raise WorkbenchError(_explain_group_error(config_name, error)) from error
    finally:
        GlobalHydra.instance().clear()


def prepare(config_name: str, argv: list[str]) -> tuple[DictConfig, list[str]]:
    """Compose the config as the stage will, turning each kind of mistake into a plain message.

    Returns the composed config and the arguments to hand Hydra (see `_rewrite`).
    """
    overrides = _value_overrides(argv)
    base = compose_base(config_name, overrides)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        argv = [
            r
            for arg, is_override in _arguments(argv)
            for r in (_rewrite(arg, base, overrides) if is_override else [arg])
        ]
        plain = [o for o in _value_overrides(argv) if not _parse_override(o).is_sweep_override()]
        try:
            cfg = compose(config_name, overrides=plain, return_hydra_config=True)
        except (ConfigCompositionException, MissingConfigException) as error:
            raise WorkbenchError(_explain_override_error(error, base)) from error
    GlobalHydra.instance().clear()
    missing = _missing_keys({k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"})
    if missing:
        raise WorkbenchError(
            f"Config key(s) {', '.join(missing)} must be given, e.g. `{missing[0]}=...`: they have no default."
        )
    _check_swept_keys(base, _value_overrides(argv))
    _check_types(base, plain)
    _check_writable(cfg)
    return cfg, argv


def validate(config_name: str, argv: list[str]) -> DictConfig:
    """The composed config of `prepare`, for callers that only check."""
    return prepare(config_name, argv)[0]


def run_stage(config_name: str, task: Callable[[DictConfig], Any]) -> None:
    """Validate `sys.argv`, then run `task` as a Hydra app; user errors exit 2 without a trace."""
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(stage_help(config_name))
        sys.exit(0)
    register_resolvers()
    try:
        if "--hydra-help" not in sys.argv[1:]:  # Hydra's own flags list needs no valid config
            sys.argv[1:] = prepare(config_name, sys.argv[1:])[1]
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
