"""Promote a registered candidate to champion through the safety gates: `childsafe promote model_name=...`.

A refusal fails the stage (exit 2), so a script or the pipeline chaining it cannot mistake it for success.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.markup import escape
from rich.table import Table

from core.errors import PromotionRefused
from core.hydra_app import console
from tracking.registry import Decision, format_figure
from tracking.registry import promote as promote_version


def show(decision: Decision) -> None:
    gates = Table(title=f"{decision.model_name} v{decision.version}: absolute gates")
    for column in ("gate", "verdict", "detail"):
        gates.add_column(column)
    for check in decision.gates:
        gates.add_row(escape(check.gate), "[green]pass" if check.passed else "[red]FAIL", escape(check.detail))
    versus = Table(title=f"{decision.model_name}: candidate v{decision.version} vs champion v{decision.against}")
    for column in ("criterion", "candidate", "champion", "verdict", "rule"):
        versus.add_column(column)
    for row in decision.table:
        verdict = "[red]worse" if row.worse else "[green]ok"
        versus.add_row(
            escape(row.criterion), format_figure(row.candidate), format_figure(row.champion), verdict, escape(row.rule)
        )
    for view in (gates, versus):
        if view.row_count:
            console.print(view)


def promote(cfg: DictConfig) -> Decision:
    """A refusal raises only after the decision is shown and written, so the stage exits non-zero with it on record."""
    decision = promote_version(
        cfg.model_name, OmegaConf.to_container(cfg.tolerances), OmegaConf.to_container(cfg.gates)
    )
    show(decision)
    if cfg.decision_file:
        record = {"model_name": decision.model_name, "version": decision.version, **decision.record()}
        Path(cfg.decision_file).write_text(json.dumps(record, indent=2))
    if not decision.promoted:
        raise PromotionRefused(
            f"{decision.explanation()}. The decision and its table are recorded on v{decision.version} "
            "(tag 'promotion'). Fix what is named and export a new candidate; if a change is intended, a "
            "reviewer may widen its tolerance in configs/promote.yaml."
        )
    console.print(escape(decision.explanation()))
    return decision
