"""Deliver spooled MLflow calls once the tracking server is back: `childsafe sync`."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from core.errors import WorkbenchError
from core.hydra_app import console
from tracking.spool import find_spools, replay


def sync(cfg: DictConfig) -> int:
    """A missing `root` is a mistyped path, not an empty spool: saying "nothing to sync" would hide it."""
    if not Path(cfg.root).is_dir():
        raise WorkbenchError(
            f"sync: root={cfg.root} is not a folder. Give a run folder or the log folder that holds "
            "the spools, e.g. root=outputs/train/runs/<run> (default: paths.log_dir)."
        )
    spools = find_spools(Path(cfg.root))
    if not spools:
        console.print(f"Nothing to sync: no spool under {cfg.root}.")
        return 0
    total = 0
    for spool in spools:
        sent = replay(spool)
        total += sent
        console.print(f"{spool.parent}: {sent} spooled calls delivered.")
    console.print(f"[bold]Synced {len(spools)} run folder(s), {total} calls.")
    return total
