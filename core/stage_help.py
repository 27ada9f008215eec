"""`childsafe <stage> --help`: a stage's own config groups, keys and defaults, composed with Hydra alone.

Its own module, importing only Hydra and OmegaConf, so `childsafe` can answer help before it loads
a stage (stages import torch), and no required key turns help into an error.
"""

from __future__ import annotations

import itertools

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from core.paths import CONFIG_DIR


def config_groups(config_name: str) -> list[str]:
    """The config groups a stage's top-level config composes (its defaults list), read without composing."""
    defaults = OmegaConf.load(CONFIG_DIR / f"{config_name}.yaml").get("defaults", [])
    entries = [next(iter(d)) for d in defaults if isinstance(d, DictConfig)]
    return [e.lstrip("/").split("@", 1)[0] for e in entries if not e.startswith("override ")]


def stage_help(config_name: str) -> str:
    """The header names the stage; the text is the config's own leading comment, then groups and keys."""
    text = (CONFIG_DIR / f"{config_name}.yaml").read_text().splitlines()
    about = [line.lstrip("#").strip() for line in itertools.takewhile(lambda x: x.startswith("#"), text)]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, return_hydra_config=True)
    GlobalHydra.instance().clear()
    chosen = cfg.hydra.runtime.choices
    groups = []
    for group in config_groups(config_name):
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        marked = [f"{o} (default)" if o == chosen.get(group) else o for o in options]
        groups.append(f"  {group:<15} {', '.join(marked)}{'' if chosen.get(group) else '  (none by default)'}")
    keys = OmegaConf.to_yaml({k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"})
    return "\n".join(
        [
            f"childsafe {config_name}: {about[0] if about else ''}",
            *[f"  {line}" for line in about[1:]],
            "",
            f"usage: childsafe {config_name} [group=option ...] [key=value ...]",
            "",
            "Config groups of this stage (group=option):",
            *groups,
            "",
            "Keys and their defaults (key=value; ??? must be given):",
            *[f"  {line}" for line in keys.splitlines()],
            "",
            "Hydra's own flags (-m, --cfg job, --info, ...): --hydra-help.",
        ]
    )
