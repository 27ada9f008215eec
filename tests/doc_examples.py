"""The JSON examples of docs/export-contract.md, checked against (and regenerated from) real exported bundles.

Each example is a fenced ```json block right after a marker `<!-- example: TASK PATH -->`, where
PATH is a dotted path into the contract (`input`, `operating_points.0`). The export tests compare
every example's structure (its keys, recursively, and the first item of each list) with the contract
they just exported, so the doc cannot drift from the code. A list of more than MAX_LISTED items
is shown with its first only. To refresh the values from bundles:

    python tests/doc_examples.py releases/childsafe-age_synthetic releases/childsafe-content_synthetic
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[1] / "docs" / "export-contract.md"
# Keys present only where the data has them: a per-year false-rejection rate calibrate measured, the reason
# beside a figure the data could not support. The structure ignores them on both sides.
CONDITIONAL = re.compile(r"false_rejection_age\d+|reason")
EXAMPLE = re.compile(r"<!-- example: (?P<task>age|content) (?P<path>[\w.]+) -->\n```json\n(?P<body>.*?)\n```", re.S)


def section(contract: dict[str, Any], path: str) -> Any:
    value: Any = contract
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def structure(value: Any) -> Any:
    """Keys all the way down (but CONDITIONAL ones); a list of objects stands for its first item's structure, and
    a list of plain values (the release warnings, a shape) for none, as only the data decides how many it holds;
    leaves are None."""
    if isinstance(value, dict):
        return {key: structure(item) for key, item in sorted(value.items()) if not CONDITIONAL.fullmatch(key)}
    if isinstance(value, list):
        return [structure(value[0])] if value and isinstance(value[0], (dict, list)) else []
    return None


def examples(text: str) -> list[tuple[str, str, Any]]:
    return [(m["task"], m["path"], json.loads(m["body"])) for m in EXAMPLE.finditer(text)]


# Lists longer than this are shown with their first item only (a stream's curve has one per frame).
MAX_LISTED = 8
# Fields that choose a section's shape: a certified section or not, a k-of-n or a mean-logit smoothing.
SHAPE_FIELDS = ("certified", "smoothing.method")


def _field(value: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def same_kind(example: Any, value: Any) -> bool:
    """A section has one shape per value of its SHAPE_FIELDS: an example shows one and is compared with that one."""
    return all(_field(example, f) is None or _field(example, f) == _field(value, f) for f in SHAPE_FIELDS)


def drift(contract: dict[str, Any], text: str | None = None) -> list[str]:
    """Each doc example of this contract's task whose structure differs from the contract's section."""
    found = [
        e
        for e in examples(text or DOC.read_text())
        if e[0] == contract["task"] and same_kind(e[2], section(contract, e[1]))
    ]
    if not found:
        return [f"docs/export-contract.md has no example for task {contract['task']}"]
    return [
        f"docs/export-contract.md example '{task} {path}' has the structure {structure(example)}, the exported "
        f"contract {structure(section(contract, path))}: regenerate it (python tests/doc_examples.py BUNDLE...)"
        for task, path, example in found
        if structure(example) != structure(section(contract, path))
    ]


def abridged(value: Any) -> Any:
    """A list of more than MAX_LISTED items cut to its first: the structure check reads only that one."""
    if isinstance(value, dict):
        return {key: abridged(item) for key, item in value.items()}
    if isinstance(value, list):
        return [abridged(item) for item in (value[:1] if len(value) > MAX_LISTED else value)]
    return value


def regenerate(bundles: list[Path]) -> None:
    """Each example from its bundle's contract where one was given (of the same kind), abridged either way."""
    contracts = {c["task"]: c for c in (json.loads((b / "contract.json").read_text()) for b in bundles)}

    def fill(match: re.Match) -> str:
        value, contract = json.loads(match["body"]), contracts.get(match["task"])
        if contract is not None and same_kind(value, section(contract, match["path"])):
            value = section(contract, match["path"])
        body = json.dumps(abridged(value), indent=2, sort_keys=True)
        return f"<!-- example: {match['task']} {match['path']} -->\n```json\n{body}\n```"

    DOC.write_text(EXAMPLE.sub(fill, DOC.read_text()))


if __name__ == "__main__":
    regenerate([Path(argument) for argument in sys.argv[1:]])
