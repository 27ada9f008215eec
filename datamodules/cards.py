"""Dataset cards: what a dataset is, who may use it for what, and what is known to be wrong with it.

A run declares its `intended_use`; a dataset whose card does not permit that use never reaches
training. The card travels with the run (MLflow) into the export contract and the model card.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from tracking.errors import WorkbenchError

USES = ("research", "commercial")
REQUIRED = (
    "name",
    "source",
    "version",
    "licence",
    "permitted_uses",
    "consent_basis",
    "contains_minors",
    "known_biases",
    "collection_notes",
)


@dataclass(frozen=True)
class DatasetCard:
    name: str
    source: str
    version: str
    licence: str
    permitted_uses: list[str]
    consent_basis: str
    contains_minors: bool
    known_biases: list[str]
    collection_notes: str
    terms_status: str = "verify before use"
    path: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def load_card(path: str | Path | None, config_key: str = "data.card") -> DatasetCard:
    """Read and check a card; every problem names the file and the field to fix."""
    if path is None or not Path(path).is_file():
        raise WorkbenchError(
            f"No dataset card at {config_key}={path}. Every licensed dataset needs one: copy an example from "
            "configs/cards/, fill in the licence and the uses it permits, and point data.card at it."
        )
    try:
        fields = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as error:
        raise WorkbenchError(f"Dataset card {path} is not valid YAML: {error}") from error
    missing = [key for key in REQUIRED if key not in fields]
    if missing:
        raise WorkbenchError(f"Dataset card {path} lacks {', '.join(missing)}; see configs/cards/ for the fields.")
    unknown_uses = set(fields["permitted_uses"] or []) - set(USES)
    if unknown_uses:
        raise WorkbenchError(
            f"Dataset card {path}, field permitted_uses: {sorted(unknown_uses)} are not uses the workbench knows; "
            f"use any of {list(USES)} (an empty list permits nothing)."
        )
    if not isinstance(fields["contains_minors"], bool):
        raise WorkbenchError(f"Dataset card {path}, field contains_minors: write true or false.")
    known = {key: fields[key] for key in (*REQUIRED, "terms_status") if key in fields}
    known["permitted_uses"] = list(fields["permitted_uses"] or [])
    known["known_biases"] = list(fields["known_biases"] or [])
    return DatasetCard(**known, path=str(path))


def require_permitted(card: DatasetCard, intended_use: str) -> None:
    """Stop before any work when the card's licence does not cover what this run is for."""
    if intended_use not in USES:
        raise WorkbenchError(f"intended_use={intended_use!r} is not one of {list(USES)}.")
    if intended_use not in card.permitted_uses:
        permitted = ", ".join(card.permitted_uses) or "nothing"
        raise WorkbenchError(
            f"Dataset '{card.name}' (card {card.path}) is licensed under {card.licence}, which permits "
            f"{permitted}; this run's intended_use is '{intended_use}'. Train on data whose licence covers "
            f"'{intended_use}', or, if you hold other terms for this data, record them in the card's permitted_uses."
        )
