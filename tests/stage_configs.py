"""Helpers tests import by name (no conftest is importable once there are two): stage configs, strict JSON."""

from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from core.hydra_app import register_resolvers
from core.paths import CONFIG_DIR


def smoke_stream_overrides() -> list[str]:
    """The stream-set sizes a smoke pipeline calibrates with (configs/pipeline.yaml), so a test's calibrate is quick."""
    smoke = OmegaConf.load(CONFIG_DIR / "pipeline.yaml").debug_runs.smoke.overrides.calibrate
    return [override for override in smoke if override.startswith("calibration.streams.")]


def compose_stage(config_name: str, root: Path, cache: Path, *overrides: str) -> DictConfig:
    """Compose a stage's config as its CLI would, with every folder redirected under `root`.

    Calibrate gets the smoke pipeline's stream-set sizes first; a test's own overrides come after them.
    """
    register_resolvers()
    GlobalHydra.instance().clear()
    defaults = smoke_stream_overrides() if config_name == "calibrate" else []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name,
            overrides=[f"paths.log_dir={root / 'outputs'}", f"paths.cache_dir={cache}", *defaults, *overrides],
            return_hydra_config=True,
        )
    HydraConfig().set_config(cfg)
    runs = root / "outputs" / cfg.task_name / "runs"
    output_dir = runs / f"run-{len(list(runs.glob('run-*'))):02d}"
    output_dir.mkdir(parents=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    GlobalHydra.instance().clear()
    return cfg


class NonFiniteJSON(ValueError):
    """A bare NaN, Infinity or -Infinity: Python writes them, JSON and strict parsers (JSON.parse) refuse them."""


def reject_non_finite(constant: str) -> None:
    """`parse_constant` for json.loads, called only for NaN, Infinity and -Infinity."""
    raise NonFiniteJSON(f"non-finite number {constant}")


def strict_json_loads(text: str):
    return json.loads(text, parse_constant=reject_non_finite)
