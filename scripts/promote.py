"""Promote a registered candidate to champion through the safety gates: `childsafe promote model_name=...`."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from scripts.hydra_app import console, run_stage
from tracking.registry import promote as promote_version


def promote(cfg: DictConfig) -> bool:
    promoted, table = promote_version(cfg.model_name, OmegaConf.to_container(cfg.tolerances))
    if table:
        view = Table(title=f"{cfg.model_name}: candidate vs champion")
        for column in ("criterion", "candidate", "champion", "verdict"):
            view.add_column(column)
        for row in table:
            verdict = "[red]worse" if row.worse else "[green]ok"
            view.add_row(row.criterion, f"{row.candidate:.4f}", f"{row.champion:.4f}", verdict)
        console.print(view)
    verdict = "promoted to champion" if promoted else "refused: the champion stays"
    console.print(f"[bold]{cfg.model_name}[/]: candidate {verdict}.")
    return promoted


def main() -> None:
    run_stage("promote", promote)


if __name__ == "__main__":
    main()
