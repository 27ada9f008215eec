"""Dataset cards: what a dataset is, who may use it for what, and what is known to be wrong with it.

A run declares its `intended_use`; a dataset whose card does not permit that use never reaches
training. The card travels with the run (MLflow) into the export contract and the model card.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import jsonschema
import yaml

from core.errors import WorkbenchError

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


TEXT_FIELDS = ("name", "source", "version", "licence", "consent_basis", "collection_notes")
CARD_SCHEMA = {
    "type": "object",
    "required": list(REQUIRED),
    "properties": {
        **{key: {"type": ["string", "number"]} for key in TEXT_FIELDS},
        "permitted_uses": {"type": ["array", "null"], "items": {"enum": list(USES)}},
        "known_biases": {"type": ["array", "null"], "items": {"type": "string"}},
        "contains_minors": {"type": "boolean"},
        "terms_status": {"type": "string"},
    },
}


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
        fields = yaml.safe_load(Path(path).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise WorkbenchError(f"Dataset card {path} is not valid YAML: {error}") from error
    problem = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(CARD_SCHEMA).iter_errors(fields))
    if problem is not None:
        field = ".".join(map(str, problem.absolute_path)) or "(top level)"
        raise WorkbenchError(
            f"Dataset card {path}, field {field}: {problem.message}. See configs/cards/ for a complete example."
        )
    known = {key: fields[key] for key in (*REQUIRED, "terms_status") if key in fields}
    known["permitted_uses"] = list(fields["permitted_uses"] or [])
    known["known_biases"] = list(fields["known_biases"] or [])
    known |= {key: str(known[key]) for key in TEXT_FIELDS}  # `version: 1.0` is fine; the card keeps it as text
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
